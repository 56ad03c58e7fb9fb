"""The fault campaign, CI-sized: 30 faults drawn with seed 1, every kind at least once.

bench/chaos.py runs 1,000 (docs/reliability.md, "Fault campaign"); this runs the
same script once for the module, under its open-loop prober and wrk, and checks
each kind of fault against the goals: no request failed while a generation was
serving, the manager alive after every fault (the same process, unless the fault
was a stop), every fault with the outcome expected, no fd more in the manager,
no zombie and nothing left behind.

Each kind that once failed names its fix in docs/reliability.md ("Fault campaign").
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(300)

SCRIPT = Path(__file__).parents[2] / "bench" / "chaos.py"
FAULTS = 30
KINDS = (
    "kill-generation", "stop-generation", "hang-on-start", "crash-on-start", "reload",
    "reload-storm", "upgrade", "term-mid-reload", "kill-manager", "garbage",
    "never-reading", "idle-1000", "oversized-line", "wrong-types", "hypothesis-json",
    "notify-flood", "fd-exhaustion", "pid-file-full", "supervised-kill",
)  # fmt: skip


def run_campaign(out: Path, *options: str) -> dict[str, Any]:
    argv = [sys.executable, str(SCRIPT), *options, "--json", str(out), "--quiet"]
    if shutil.which("wrk") is None:
        argv.append("--no-wrk")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert out.exists(), f"exit {result.returncode}:\n{result.stdout}\n{result.stderr[-4000:]}"
    report: dict[str, Any] = json.loads(out.read_text())
    return report


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("chaos") / "chaos.json"
    return run_campaign(out, "--faults", str(FAULTS), "--seed", "1")


def problems(campaign: dict[str, Any], kind: str) -> list[str]:
    found = []
    for fault in campaign["faults"]:
        if fault["kind"] == kind:
            found += fault["problems"] + ([fault["manager_died"]] if fault["manager_died"] else [])
            found += [f"left behind: {line}" for line in fault["left_behind"]]
    return found


def windows(campaign: dict[str, Any], kind: str) -> list[str]:
    """Each fault of ``kind`` with its times (s from the start), to read the examples
    of a failure against: which window a request was sent in, which kill it met."""
    keys = ("index", "begin", "inject_at", "end", "kills", "outages")
    return [
        str({key: fault[key] for key in keys})
        for fault in campaign["faults"]
        if fault["kind"] == kind
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_each_fault_kind_leaves_the_service_and_the_manager_whole(
    campaign: dict[str, Any], kind: str
) -> None:
    if kind not in campaign["config"]["kinds"]:
        pytest.skip(f"{kind} was left out: it needs root, a tmpfs or runit")
    tally = campaign["kinds"][kind]
    assert tally["injected"] >= 1
    assert tally["failed"] == 0, (
        f"failed while serving (fault, sent at s, outcome, latency s): {tally['examples']};"
        f" its faults: {windows(campaign, kind)}; problems: {problems(campaign, kind)}"
    )
    assert tally["alive_after"] == tally["injected"], problems(campaign, kind)
    assert tally["problems"] == 0, problems(campaign, kind)
    assert tally["fd_delta"] <= 0
    assert tally["zombies"] == 0 and tally["left_behind"] == 0


def test_the_campaign_ran_every_fault_and_left_nothing_behind(campaign: dict[str, Any]) -> None:
    assert len(campaign["faults"]) == FAULTS
    assert campaign["left_at_end"] == []
    between = campaign["kinds"].get("(between faults)", {"failed": 0})
    assert between["failed"] == 0
    assert sum(tally["requests"] for tally in campaign["kinds"].values()) > 1000


def test_out_of_fds_a_pending_health_probe_waits_and_the_manager_does_not_spin(
    tmp_path: Path,
) -> None:
    options = ["--health", "--kinds", "fd-exhaustion,reload", "--faults", "4", "--seed", "1"]
    report = run_campaign(tmp_path / "chaos.json", *options)
    tally = report["kinds"]["fd-exhaustion"]
    assert tally["injected"] == 2 and tally["failed"] == 0
    assert tally["problems"] == 0, problems(report, "fd-exhaustion")
