"""Real servers from PyPI as children of ``gapless run``, reloaded under load: the
table the tests, bench/run_figures.py and docs/run.md share.

Each server is started unchanged on the socket it inherits (``LISTEN_FDS``), and
every answer names the pid that served it (tests/apps/run_app.py, run_fd_http.py,
run_twisted_root/index.rpy), so a test knows when the new generation serves.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from load import WRK, Wrk, WrkReport
from manager_harness import APPS, PYTHON, Manager, Prober

from gapless.run.control import call

BIN = Path(sys.executable).parent
RELOAD_TIMEOUT = 60.0  # a busy CI machine takes seconds to start a Python server

# What a server does to a connection it accepted but has not read yet when it gets
# SIGTERM: close it unanswered. The client sees it as these, never as a refusal.
CLOSED_UNANSWERED = ("RemoteDisconnected", "ConnectionResetError", "BadStatusLine")


@dataclass(frozen=True)
class Server:
    """One server as a child of ``gapless run``.

    Args:
        name: the test id.
        argv: the command after ``--``.
        options: ``gapless run`` options it needs.
        needs: a module that must be importable (else the test skips).
        loses: None when it drains correctly; else what it does on SIGTERM that loses
            requests, with the figure measured (see docs/run.md).
    """

    name: str
    argv: list[str]
    options: tuple[str, ...] = ()
    needs: str = ""
    loses: str | None = None

    def missing(self) -> str | None:
        """Why it cannot run here, or None."""
        if self.argv[0] != "sh" and not os.path.exists(self.argv[0]):
            return f"{self.argv[0]} is not installed (pip install --group test)"
        if self.needs and importlib.util.find_spec(self.needs) is None:
            return f"{self.needs} is not importable (a newer {self.needs.split('.')[0]} needed)"
        if self.argv[0] == "sh" and shutil.which("systemd-notify") is None:
            return "systemd-notify is not installed (apt-get install systemd)"
        return None


def _gunicorn(worker: str, app: str) -> list[str]:
    # Two workers; no gunicorn control socket, which generations would fight over.
    return [str(BIN / "gunicorn"), "-w", "2", "-k", worker, "--no-control-socket", app]


ASYNCIO_CLOSE = (
    "on SIGTERM it closes the connections it accepted but has not read yet, unanswered "
    "(uvicorn issue 2757)"
)
SERVERS = [
    # gunicorn says READY=1 when its arbiter has booted, before any worker runs;
    # --ready accept waits for a worker, so a worker that fails to boot fails the reload.
    Server("gunicorn-sync", _gunicorn("sync", "run_app:wsgi"), ("--ready", "accept")),
    Server(
        "gunicorn-asgi",
        _gunicorn("asgi", "run_app:asgi"),
        ("--ready", "accept"),
        needs="gunicorn.workers.gasgi",
    ),
    Server(
        "gunicorn-uvicorn-worker",
        _gunicorn("uvicorn.workers.UvicornWorker", "run_app:asgi"),
        ("--ready", "accept"),
        loses=f"UvicornWorker is uvicorn's server: {ASYNCIO_CLOSE}; measured 27 of 48,273 "
        "requests in 20 reloads",
    ),
    Server(
        "uvicorn",
        [str(BIN / "uvicorn"), "--fd", "3", "--no-access-log", "run_app:asgi"],
        loses=f"{ASYNCIO_CLOSE}; measured 1 of 74,308 requests in 30 reloads",
    ),
    Server(
        "hypercorn",
        [str(BIN / "hypercorn"), "--bind", "fd://3", "run_app:asgi"],
        loses=f"{ASYNCIO_CLOSE}; measured 10 of 19,513 requests in 20 reloads",
    ),
    Server(
        "twisted",
        [
            str(BIN / "twistd"),
            "-n",
            "--pidfile=",
            "web",
            "--listen",
            "systemd:domain=INET:name=web",
            "--path",
            str(APPS / "run_twisted_root"),
        ],
        loses="on SIGTERM the reactor stops and drops every connection it holds, answered "
        "or not; measured 24 of 11,246 requests in 20 reloads",
    ),
    Server(
        "shell-systemd-notify",
        ["sh", "-c", f"systemd-notify --ready && exec {PYTHON} {APPS / 'run_fd_http.py'}"],
        ("--ready", "notify"),
    ),
]
ENV = {**os.environ, "PYTHONPATH": str(APPS)}  # where run_app is imported from


@dataclass
class Outcome:
    """What the clients saw across the reloads."""

    reloads: list[str] = field(default_factory=list)
    answered: int = 0
    probe_failures: list[str] = field(default_factory=list)
    wrk: WrkReport | None = None

    @property
    def failed(self) -> int:
        return len(self.probe_failures) + (self.wrk.failed if self.wrk else 0)

    @property
    def requests(self) -> int:
        return self.answered + len(self.probe_failures) + (self.wrk.requests if self.wrk else 0)

    def describe(self) -> str:
        load = f"; wrk: {self.wrk}" if self.wrk else "; wrk: not installed"
        failures = f" {self.probe_failures[:3]}" if self.probe_failures else ""
        return (
            f"{self.failed} failed of {self.requests}; prober: {self.answered} answered, "
            f"{len(self.probe_failures)} failed{failures}{load}"
        )


def reload_under_load(manager: Manager, script_dir: Path, reloads: int) -> Outcome:
    """Reload ``reloads`` times under the prober and wrk (``Connection: close``),
    each time waiting until the new generation has answered a request.

    Returns:
        What the clients saw; a reload that failed fails the caller at once.
    """
    outcome = Outcome()
    with Prober(manager.port) as prober, contextlib.ExitStack() as stack:
        wrk = (
            stack.enter_context(Wrk(manager.port, script_dir, connections=8, close=True))
            if WRK
            else None
        )
        if wrk:
            wrk.wait_started()
        for _ in range(reloads):
            answer = call(manager.control, "reload", timeout=RELOAD_TIMEOUT)
            assert answer["ok"], f"{answer}\n{manager.log()}"
            outcome.reloads.append(answer["message"])
            prober.wait_answer_from_any(_pids(manager, answer["generation"]))
        outcome.wrk = wrk.stop() if wrk else None
    outcome.answered, outcome.probe_failures = prober.answered, prober.failures
    return outcome


def _pids(manager: Manager, generation: int) -> list[int]:
    for gen in manager.status()["generations"]:
        if gen["generation"] == generation:
            return list(gen["pids"])
    raise AssertionError(f"generation {generation} not in status:\n{manager.log()}")


def wait_drained(manager: Manager, generations: range) -> list[str]:
    """Wait until each of ``generations`` has exited; return how each ended."""
    ends = []
    for number in generations:
        line = manager.wait_line(rf"generation {number} \(pid \d+\) (exited|killed) .*")
        ends.append(line.group(0))
    return ends
