"""The fleet behind HAProxy, CI-sized: two gapless serve hosts, the first replaced
as Kubernetes replaces a pod (TERM with --shutdown-delay, HAProxy sees 503 and takes
it out, it drains, a new version starts and is put back), under the open-loop
prober through HAProxy with keep-alive: no request fails, and nothing is left
running. bench/fleet.py runs the full comparison (docs/fleet.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from fleet_deploy import FleetConfig, run_fleet  # noqa: E402
from fleet_haproxy import haproxy_path  # noqa: E402

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        haproxy_path() is None, reason="haproxy is not installed (apt-get install haproxy)"
    ),
]


def _left_running(directory: Path) -> list[int]:
    """Processes whose environment points into ``directory`` (every host's)."""
    needle = f"FLEET_VERSION_FILE={directory}".encode()
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes():
                    left.append(int(entry.name))
            except OSError:
                pass  # gone, or not ours
    return left


def test_a_replacement_with_shutdown_delay_loses_nothing(tmp_path: Path) -> None:
    config = FleetConfig(
        deploy="replace",
        deploys=1,
        hosts=2,
        rolled=1,
        rate=100,
        connections=8,
        wrk_connections=0,
        gap=0.5,
    )
    result = run_fleet(config, str(tmp_path))

    outcomes = [sample.outcome for sample in result.samples]
    assert len(outcomes) > 500
    assert outcomes.count("ok") == len(outcomes), {o: outcomes.count(o) for o in set(outcomes)}
    assert result.haproxy["hrsp_5xx"] == 0, result.haproxy
    assert [(step.host, list(step.events)) for step in result.steps] == [
        (host, ["term", "down", "exited", "ready", "up"]) for host in ("host1",)
    ]
    # HAProxy took the host out (503 draining) before its drain began.
    assert all(step.events["down"] < config.shutdown_delay for step in result.steps)
    assert _left_running(tmp_path) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--deploy", "replace,rolling"], "unknown deploy mode 'rolling'"),
        (["--deploy", "reload", "--drain-mode", "runtime-api"], "add --deploy replace"),
        (["--connections", "0"], "--connections take 1 or more"),
    ],
)
def test_the_script_refuses_bad_options_in_one_line(options: list[str], message: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, str(BENCH / "fleet.py"), *options],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert done.returncode == 2
    assert message in done.stderr.splitlines()[-1]
