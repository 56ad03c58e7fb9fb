"""Restarts by real supervisors, each driven by its own command, with ``gapless run
--handoff``: daemontools (supervise, ``svc -t``), runit (runsv, ``sv restart``), s6
(s6-supervise, ``s6-svc -r``) from Debian's packages and supervisord from PyPI
(``supervisorctl restart``). While a prober sends requests and a slow request is in
flight at each restart, 5 restarts give no refused or reset connection, and every
slow request completes. Each supervisor runs on a service directory under tmp_path,
never system-wide; the services' stderr goes to a FIFO the test reads."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from lines import Lines
from manager_harness import DEMO, Prober
from restart_harness import TIMEOUT, SlowRequest, kill_everything_named

pytestmark = pytest.mark.timeout(90)

RESTARTS = 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def need(*programs: str) -> None:
    missing = [program for program in programs if shutil.which(program) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/setup.sh installs them)")


def write_service(directory: Path, port: int, log: Path) -> Path:
    """A service directory whose ./run execs gapless run --handoff, stderr to ``log``."""
    directory.mkdir()
    gapless = [sys.executable, "-m", "gapless.cli", "run", "--handoff"]
    gapless += ["--control", str(directory.parent / "control.sock")]
    gapless += ["--bind", f"web=127.0.0.1:{port}", "--", *DEMO]
    run = directory / "run"
    run.write_text(f"#!/bin/sh\nexec 2>'{log}'\nexec {' '.join(gapless)}\n")
    run.chmod(0o755)
    return directory


@contextmanager
def service_log(tmp_path: Path) -> Iterator[tuple[Path, Lines]]:
    """A FIFO every instance writes its stderr to; held open for writing here too,
    so it never reaches EOF between two instances."""
    path = tmp_path / "log"
    os.mkfifo(path)
    fd = os.open(path, os.O_RDWR)
    lines = Lines(os.fdopen(fd, "r"))
    try:
        yield path, lines
    finally:
        kill_everything_named(lines)


def restart_five_times(lines: Lines, port: int, restart: Callable[[], object]) -> None:
    """The scenario: each restart by the supervisor's command hands the sockets from
    one manager to the next while requests keep coming and a slow one is in flight."""
    current = lines.wait_line(r"gapless\[(\d+)\]: generation 1 ready after").group(1)
    with Prober(port) as prober:
        for _ in range(RESTARTS):
            slow = SlowRequest(port, "1s")
            prober.wait_answers(prober.answered + 2)  # queued after it: it was accepted
            restart()
            taker = rf"gapless\[(\d+)\]: took 1 listening socket\(s\) from pid {current}\b"
            new = lines.wait_line(taker).group(1)
            lines.wait_line(rf"gapless\[{new}\]: generation 1 ready after")
            lines.wait_line(rf"gapless\[{current}\]: stopped with exit code 0")
            assert slow.result() == 200
            current = new
            prober.wait_answers(prober.answered + 2)
    assert prober.failures == []


@contextmanager
def supervising(argv: list[str], stop: list[str] | None = None) -> Iterator[None]:
    """Run a supervisor in a session of its own; stop it (its own way, then for sure)."""
    process = subprocess.Popen(
        argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield
    finally:
        if stop:
            subprocess.run(stop, timeout=TIMEOUT, capture_output=True)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(TIMEOUT)


def run(*argv: str) -> None:
    result = subprocess.run(argv, timeout=TIMEOUT, capture_output=True, text=True)
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"


def test_daemontools_svc_t(tmp_path: Path) -> None:
    need("supervise", "svc")
    port = free_port()
    with service_log(tmp_path) as (log, lines):
        service = write_service(tmp_path / "app", port, log)
        with supervising(["supervise", str(service)], ["svc", "-dx", str(service)]):
            restart_five_times(lines, port, lambda: run("svc", "-t", str(service)))


def test_runit_sv_restart(tmp_path: Path) -> None:
    need("runsv", "sv")
    port = free_port()
    with service_log(tmp_path) as (log, lines):
        service = write_service(tmp_path / "app", port, log)
        with supervising(["runsv", str(service)], ["sv", "exit", str(service)]):
            restart_five_times(lines, port, lambda: run("sv", "restart", str(service)))


def test_s6_svc_r(tmp_path: Path) -> None:
    need("s6-supervise", "s6-svc")
    port = free_port()
    with service_log(tmp_path) as (log, lines):
        service = write_service(tmp_path / "app", port, log)
        with supervising(["s6-supervise", str(service)], ["s6-svc", "-xd", str(service)]):
            restart_five_times(lines, port, lambda: run("s6-svc", "-r", str(service)))


SUPERVISORD_CONF = """\
[unix_http_server]
file={here}/supervisor.sock

[supervisord]
nodaemon=true
logfile={here}/supervisord.log
pidfile={here}/supervisord.pid

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{here}/supervisor.sock

[program:app]
command={here}/app/run
startsecs=0
stopwaitsecs=30
autorestart=true
stdout_logfile={here}/app.out
stderr_logfile={here}/app.err
"""


def test_supervisord_supervisorctl_restart(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    supervisord, supervisorctl = bin_dir / "supervisord", bin_dir / "supervisorctl"
    if not supervisord.exists():
        pytest.skip("supervisor is not installed (pip install --group test)")
    port = free_port()
    conf = tmp_path / "supervisord.conf"
    conf.write_text(SUPERVISORD_CONF.format(here=tmp_path))
    ctl = [str(supervisorctl), "-c", str(conf)]
    with service_log(tmp_path) as (log, lines):
        write_service(tmp_path / "app", port, log)
        with supervising([str(supervisord), "-c", str(conf)], [*ctl, "shutdown"]):
            restart_five_times(lines, port, lambda: run(*ctl, "restart", "app"))
