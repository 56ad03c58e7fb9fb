"""Strategies whose server binds its socket by itself: the naive restart and the
peers' own reloads (gunicorn, uvicorn, granian).

COMMAND names the address with placeholders: ``{host}``, ``{port}`` and
``{address}`` (``host:port``). A server counts as started once it prints that it
listens (:data:`~gapless.bench.processes.LISTENING`) and then answers a request.

Example::

    strategy = SignalReload(["gunicorn", "--bind", "{address}", "app:app"])
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import ClassVar

from ..errors import BenchError
from ..sockets.addresses import TcpAddress
from .processes import (
    LISTENING,
    OutputPump,
    parent,
    stop_tree,
    wait_exited,
    wait_new_pid,
    workers,
)
from .strategy import ReloadTiming, Strategy

__all__ = ["GunicornUpgrade", "NaiveRestart", "SignalReload", "tool"]

_PLACEHOLDERS = ("{host}", "{port}", "{address}")
_PROMOTED = re.compile(r"Master has been promoted")


def tool(name: str) -> str:
    """``name`` beside this interpreter (a virtualenv's bin), else as found in PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.access(beside, os.X_OK) else shutil.which(name) or name


class _SelfBinding(Strategy):
    def __init__(self, command: Sequence[str] = (), *, timeout: float = 60.0) -> None:
        super().__init__(command, timeout=timeout)
        if not any(mark in arg for arg in self.command for mark in _PLACEHOLDERS):
            raise BenchError(
                f"strategy {self.name!r} runs a server that binds by itself: put {{address}} "
                f"or {{host}} and {{port}} in COMMAND, e.g. {' '.join(self.default_command)}"
            )
        self._processes: list[subprocess.Popen[bytes]] = []
        self._pumps: list[OutputPump] = []

    def _launch(self, old: Sequence[int] = ()) -> subprocess.Popen[bytes]:
        """Start COMMAND; return once it said it listens and a pid not in ``old`` answers."""
        assert self.address is not None
        argv = [self._fill(arg, self.address) for arg in self.command]
        try:
            process = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # apart from ours: a ^C reaches only the bench
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        except OSError as exc:
            raise BenchError(f"cannot start {argv[0]!r}: {exc.strerror}") from None
        assert process.stdout is not None
        self._processes.append(process)
        self.main_pid = process.pid
        self._pumps.append(OutputPump(os.dup(process.stdout.fileno())))
        process.stdout.close()
        self._pumps[-1].wait_for(LISTENING, self.timeout)
        wait_new_pid(self.address, old, self.timeout)
        return process

    @staticmethod
    def _fill(arg: str, address: TcpAddress) -> str:
        return (
            arg.replace("{host}", address.host)
            .replace("{port}", str(address.port))
            .replace("{address}", str(address))
        )

    def output_tail(self) -> list[str]:
        return [line for pump in self._pumps[-2:] for line in pump.tail()]

    def stop(self) -> None:
        """Stop the main process and its tree; kill any other child of ours left (an
        interrupted reload's); reap them all, stop reading their output."""
        try:
            if self.main_pid is not None:
                stop_tree(self.main_pid, self.timeout)
        finally:
            for process in self._processes:
                if process.poll() is None:
                    process.kill()
                process.wait(self.timeout)
            for pump in self._pumps:
                pump.close()


class NaiveRestart(_SelfBinding):
    """Stop the server, wait until it exited, start it again."""

    name = "naive"
    summary = "naive restart: stop the server, then start it again"
    default_command = (sys.executable, "-m", "gapless.demo", "--bind", "web={address}")

    def start(self, address: TcpAddress) -> None:
        self.address = address
        self._process = self._launch()

    def reload(self) -> ReloadTiming:
        old = self._process
        old_pids = (old.pid, *workers(old.pid))
        signalled = time.monotonic()
        old.terminate()
        exited = wait_exited(old_pids, self.timeout)
        old.wait()
        self._process = self._launch(old_pids)
        return ReloadTiming(signalled, time.monotonic(), exited, old_pids, (self._process.pid,))


class SignalReload(_SelfBinding):
    """One signal to the server's master, which replaces its workers by itself."""

    name = "gunicorn-hup"
    summary = "gunicorn HUP: the master starts new workers, then stops the old ones"
    reload_signal: ClassVar[signal.Signals] = signal.SIGHUP
    default_command: ClassVar[tuple[str, ...]] = (
        tool("gunicorn"), "--bind", "{address}", "--workers", "2", "--no-control-socket",
        "gapless.bench.apps:wsgi",
    )  # fmt: skip

    def start(self, address: TcpAddress) -> None:
        self.address = address
        self._launch()

    def reload(self) -> ReloadTiming:
        assert self.address is not None and self.main_pid is not None
        master = self.main_pid
        old_pids = tuple(workers(master))
        signalled = time.monotonic()
        os.kill(master, self.reload_signal)
        wait_new_pid(self.address, (master, *old_pids), self.timeout)
        ready = time.monotonic()
        exited = wait_exited(old_pids, self.timeout)
        return ReloadTiming(signalled, ready, exited, old_pids, tuple(workers(master)))


class UvicornReload(SignalReload):
    name = "uvicorn-hup"
    summary = "uvicorn --workers 2, SIGHUP: each worker replaced by a new one once it is ready"
    default_command = (
        tool("uvicorn"), "--host", "{host}", "--port", "{port}", "--workers", "2",
        "--no-access-log", "gapless.bench.apps:asgi",
    )  # fmt: skip


class GranianReload(SignalReload):
    name = "granian-hup"
    summary = "granian --workers 2, SIGHUP: workers respawned one by one"
    default_command = (
        tool("granian"), "--interface", "asgi", "--host", "{host}", "--port", "{port}",
        "--workers", "2", "gapless.bench.apps:asgi",
    )  # fmt: skip


class GunicornUpgrade(SignalReload):
    """gunicorn's binary upgrade: USR2 starts a new master beside the old one; then
    the recipe's WINCH (a no-op unless daemonized) and QUIT (a quick stop) to the old.

    The reload is complete once the new master says it was promoted: until then it
    ignores a USR2 of its own ("Parent exists").
    """

    name = "gunicorn-usr2"
    summary = "gunicorn USR2, then WINCH and QUIT to the old master (the common recipe)"
    retire: ClassVar[tuple[signal.Signals, ...]] = (signal.SIGWINCH, signal.SIGQUIT)

    def reload(self) -> ReloadTiming:
        assert self.address is not None and self.main_pid is not None
        old_master = self.main_pid
        old_pids = (old_master, *workers(old_master))
        lines = self._pumps[0].seen
        signalled = time.monotonic()
        os.kill(old_master, signal.SIGUSR2)
        worker = wait_new_pid(self.address, old_pids, self.timeout)
        ready = time.monotonic()
        new_master = parent(worker)
        if new_master in old_pids or parent(new_master) != old_master:
            raise BenchError(f"after USR2, pid {worker} answered, not a new master's worker")
        for sig in self.retire:
            os.kill(old_master, sig)
        exited = wait_exited(old_pids, self.timeout)
        for process in self._processes:
            process.poll()  # reap the first master, our child
        self.main_pid = new_master
        self._pumps[0].wait_for(_PROMOTED, self.timeout, after=lines)
        return ReloadTiming(signalled, ready, exited, old_pids, (new_master, worker))


class GunicornUpgradeTerm(GunicornUpgrade):
    name = "gunicorn-usr2-term"
    summary = "gunicorn USR2, then TERM to the old master (gunicorn's documented way)"
    retire = (signal.SIGTERM,)
