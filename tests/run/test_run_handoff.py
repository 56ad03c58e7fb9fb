"""``gapless run --handoff``: a restart by stop-then-start loses nothing. The test
plays the supervisor: TERM to the process it started, then the same command again."""

from __future__ import annotations

import http.client
import os
import signal
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from lines import Lines
from manager_harness import TIMEOUT, Prober, app, gapless_argv
from restart_harness import SlowRequest, instances, port_of

from gapless.proc.pidfile import read_pid_file
from gapless.run.control import call

pytestmark = pytest.mark.timeout(90)


def restart(
    old: tuple[subprocess.Popen[str], Lines], start: subprocess.Popen[str] | None = None
) -> None:
    """What a supervisor does: TERM, wait for the exit (prompt), start again."""
    process, lines = old
    process.send_signal(signal.SIGTERM)
    assert process.wait(TIMEOUT) == 0
    lines.wait_line(r"SIGTERM: exiting; the manager \(pid \d+\) serves on")
    lines.wait_line(r"the supervised process exited: serving on, detached")


def test_restarts_by_stop_and_start_lose_nothing_and_finish_slow_requests(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "app.pid"
    with instances(tmp_path, "--pid-file", str(pid_file)) as started:
        current = started.start()
        current[1].wait_line("generation 1 ready after")
        port = port_of(current[1])
        handoff = tmp_path / "control.handoff.sock"
        assert stat.S_IMODE(os.stat(handoff).st_mode) == 0o600
        with Prober(port) as prober:
            for _ in range(3):
                slow = SlowRequest(port, "1s")
                prober.wait_answers(prober.answered + 2)
                restart(current)
                following = started.start()
                following[1].wait_line(r"took 1 listening socket\(s\) from pid \d+")
                following[1].wait_line("generation 1 ready after")
                following[1].wait_line(r"pid \d+ retires: it drains and exits")
                current[1].wait_line(r"pid \d+ took over: draining")
                current[1].wait_line("stopped with exit code 0")
                assert slow.result() == 200
                # The PID file names the process a supervisor follows, i.e. the new front.
                assert read_pid_file(pid_file) == following[0].pid
                current = following
                prober.wait_answers(prober.answered + 2)
        assert prober.failures == []
        assert port_of(current[1]) == port
        status = call(started.control, "status", timeout=TIMEOUT)
        assert status["manager"]["restarts"]["handoff"]["path"] == str(handoff)


def test_no_taker_within_the_timeout_drains_and_exits(tmp_path: Path) -> None:
    with instances(tmp_path, "--handoff-timeout", "1") as started:
        first = started.start()
        first[1].wait_line("generation 1 ready after")
        restart(first)
        first[1].wait_line(r"no instance took over within 1 s: draining")
        first[1].wait_line("stopped with exit code 0")
        assert not (tmp_path / "control.handoff.sock").exists()
        assert not (tmp_path / "control.sock").exists()


def test_gapless_stop_is_a_real_stop_and_the_front_exits_with_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "app.pid"
    with instances(tmp_path, "--pid-file", str(pid_file)) as started:
        process, lines = started.start()
        lines.wait_line("generation 1 ready after")
        assert read_pid_file(pid_file) == process.pid  # the front: the process to signal
        process.send_signal(signal.SIGHUP)  # forwarded: a reload
        lines.wait_line("generation 2 ready after")
        refused = call(started.control, "upgrade", timeout=TIMEOUT)  # exec in place: not here
        assert not refused["ok"] and "restart through the supervisor" in refused["error"]
        assert call(started.control, "stop", timeout=TIMEOUT)["ok"]
        assert process.wait(TIMEOUT) == 0
        assert not pid_file.exists()
        assert not any("detached" in line for line in lines.lines)


def test_a_taker_that_fails_changes_nothing_and_the_next_one_takes_over(tmp_path: Path) -> None:
    with instances(tmp_path) as started:
        first = started.start()
        first[1].wait_line("generation 1 ready after")
        port = port_of(first[1])
        with Prober(port) as prober:
            restart(first)
            failing = started.start(app("exit3.py"))
            assert failing[0].wait(TIMEOUT) == 1
            first[1].wait_line(r"pid \d+ left before taking over; serving on as before")
            prober.wait_answers(prober.answered + 2)
            assert call(started.control, "status", timeout=TIMEOUT)["ok"]  # answered again
            second = started.start()
            second[1].wait_line(r"pid \d+ retires")
            first[1].wait_line("stopped with exit code 0")
            prober.wait_answers(prober.answered + 2)
        assert prober.failures == []


def test_a_unix_listener_path_outlives_the_instance_that_bound_it(tmp_path: Path) -> None:
    path = tmp_path / "web.sock"
    with instances(tmp_path, binds=("web=127.0.0.1:0", f"unix:{path}")) as started:
        first = started.start()
        first[1].wait_line("generation 1 ready after")
        restart(first)
        second = started.start()
        second[1].wait_line(r"pid \d+ retires")
        first[1].wait_line("stopped with exit code 0")
        assert path.exists() and (tmp_path / "control.sock").exists()
        assert call(started.control, "status", timeout=TIMEOUT)["manager"]["pid"] != 0
        second[0].send_signal(signal.SIGINT)  # forwarded: a real stop
        assert second[0].wait(TIMEOUT) == 0
        assert not path.exists(), "the last instance removes the path it took over"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--handoff-timeout", "0"], "--handoff-timeout: invalid duration '0'"),
        (["--shutdown-delay", "-1"], "--shutdown-delay: invalid duration '-1'"),
        (["--health-bind", "x:99999"], "argument --health-bind: invalid bind 'x:99999'"),
    ],
)
def test_misuse_of_the_restart_options_is_one_line_and_exit_2(
    args: list[str], message: str
) -> None:
    result = subprocess.run(
        gapless_argv("run", *args, "--", "true"), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr


class HealthProber(threading.Thread):
    """Asks the health endpoint again and again; records every answer."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.done = threading.Event()
        self.answers: list[int | str] = []

    def run(self) -> None:
        while not self.done.is_set():
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
            try:
                connection.request("GET", "/ready")
                self.answers.append(connection.getresponse().status)
            except (OSError, http.client.HTTPException) as exc:
                self.answers.append(f"{type(exc).__name__}: {exc}")
            finally:
                connection.close()


def test_the_health_endpoint_passes_with_the_sockets_and_says_serving_throughout(
    tmp_path: Path,
) -> None:
    with instances(tmp_path, "--health-bind", "127.0.0.1:0") as started:
        first = started.start()
        port = int(first[1].wait_line(r"health endpoint on 127\.0\.0\.1:(\d+)").group(1))
        first[1].wait_line("generation 1 ready after")
        prober = HealthProber(port)
        prober.start()
        restart(first)
        second = started.start()
        assert second[1].wait_line(r"health endpoint on 127\.0\.0\.1:(\d+)").group(1) == str(port)
        second[1].wait_line(r"pid \d+ retires")
        first[1].wait_line("stopped with exit code 0")
        prober.done.set()
        prober.join(TIMEOUT)
        assert prober.answers and set(prober.answers) == {200}, set(prober.answers)
