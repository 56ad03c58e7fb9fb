"""gapless serve --handoff: a supervisor's stop-then-start loses nothing."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from lines import Lines
from manager_harness import Prober, gapless_argv
from restart_harness import Instances, port_of

APPS = Path(__file__).parents[1] / "apps"


class ServeInstances(Instances):
    """``gapless serve --handoff`` instances, started by hand as a supervisor would."""

    def start(self, command: Sequence[str] | None = None) -> tuple[subprocess.Popen[str], Lines]:
        process = subprocess.Popen(
            [*gapless_argv("serve", "serve_app:app", *self.options), "--no-access-log"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=self.tmp_path,
            env={**os.environ, "PYTHONPATH": str(APPS)},
        )
        started = (process, Lines(process.stderr))  # type: ignore[arg-type]
        self.started.append(started)
        return started


def test_serve_restarts_by_stop_and_start_lose_nothing(tmp_path: Path) -> None:
    instances = ServeInstances(tmp_path, ["--bind", "web=127.0.0.1:0"], [])
    try:
        current = instances.start()
        current[1].wait_line("generation 1 ready after")
        port = port_of(current[1])
        with Prober(port) as prober:
            for _ in range(2):
                prober.wait_answers(prober.answered + 2)
                current[0].terminate()  # what a supervisor's restart sends first
                assert current[0].wait(15) == 0, "the supervised process exits at once"
                following = instances.start()
                following[1].wait_line(r"took 1 listening socket\(s\) from pid \d+")
                following[1].wait_line("generation 1 ready after")
                current[1].wait_line("stopped with exit code 0")
                current = following
                prober.wait_answers(prober.answered + 2)
        assert prober.failures == []
        assert port_of(current[1]) == port
    finally:
        instances.kill_all()
