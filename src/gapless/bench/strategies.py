"""How a server is restarted: one class per strategy, each with ``start(address)``,
``reload()`` and ``stop()``.

Just over 300 lines: the strategies are compared side by side, so they stay side
by side.

``reload()`` returns only when the reload is complete, as events show it: a new
process answering (or, for gapless, its explicit readiness), and every old process
exited (pidfds). It never sleeps. The strategies here hand the server its socket
or run it under gapless; those whose server binds by itself are in
:mod:`gapless.bench.servers`.

=============  ================================================================
``run``        ``gapless run`` holds the socket; ``gapless reload`` (the default)
``run-notify`` the same with ``--ready notify`` (no /proc polling while starting)
``library``    the server adopts LISTEN_FDS and upgrades itself on USR2 (the demo)
``serve``      ``gapless serve``: uvicorn, a lossless drain, warm starts
``reuseport``  each generation gets its own SO_REUSEPORT socket, handed over as
               LISTEN_FDS; the new one starts beside the old, then the old goes
=============  ================================================================

Example::

    strategy = RunStrategy()
    strategy.start(TcpAddress("127.0.0.1", 8000))
    timing = strategy.reload()
    strategy.stop()
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from ..errors import BenchError, GaplessError
from ..proc.spawn import Child, spawn
from ..run.control import call
from ..sockets.addresses import Bind, TcpAddress
from ..sockets.listeners import DEFAULT_BACKLOG, open_listener
from ..systemd.notify_receiver import NotifyReceiver
from .notifications import DiscardingReader, wait_notification
from .processes import OutputPump, stop_tree, wait_exited, wait_new_pid, workers
from .strategy import ReloadTiming, Strategy

__all__ = [
    "STRATEGIES",
    "LibraryStrategy",
    "ReuseportStrategy",
    "RunStrategy",
    "ServeStrategy",
    "make_strategy",
]

DEMO = (sys.executable, "-m", "gapless.demo", "--quiet", "--bind", "web=127.0.0.1:0")


class _Handed(Strategy):
    """Servers started by us with their socket on fd 3 (LISTEN_FDS, name ``web``)."""

    default_command: ClassVar[tuple[str, ...]] = DEMO

    def __init__(self, command: Sequence[str] = (), *, timeout: float = 60.0) -> None:
        super().__init__(command, timeout=timeout)
        self._children: list[Child] = []
        self._pumps: list[OutputPump] = []

    def _spawn(self, argv: list[str], sock: socket.socket | None, **env: str) -> Child:
        child = spawn(
            argv,
            listeners=[sock] if sock is not None else [],
            names=["web"] if sock is not None else [],
            env={**os.environ, **env},
            new_process_group=True,
            capture_stderr=True,
        )
        if sock is not None:
            sock.close()  # the server's own now, as if it had bound it
        assert child.stderr_fd is not None
        self._pumps.append(OutputPump(child.stderr_fd))
        child.stderr_fd = None  # the pump closes it
        self._children.append(child)
        self.main_pid = child.pid
        return child

    def output_tail(self) -> list[str]:
        return [line for pump in self._pumps[-2:] for line in pump.tail()]

    def stop(self) -> None:
        """Stop the main process and its tree; kill any other child of ours left (an
        interrupted reload's); reap them all, stop reading their output."""
        try:
            if self.main_pid is not None:
                stop_tree(self.main_pid, self.timeout)
        finally:
            for child in self._children:
                child.send_signal(signal.SIGKILL)  # through its pidfd; none if reaped
                child.wait(self.timeout)
                child.close()
            for pump in self._pumps:
                pump.close()


class LibraryStrategy(_Handed):
    """The gapless library in the server: USR2, the successor reports MAINPID + READY=1."""

    name = "library"
    summary = "gapless library mode: the server upgrades itself on USR2 (the demo server)"
    _receiver: NotifyReceiver | None = None

    def start(self, address: TcpAddress) -> None:
        self.address = address
        self._receiver = NotifyReceiver()
        sock = open_listener(Bind(address, "web"))
        self._spawn(self.command, sock, NOTIFY_SOCKET=self._receiver.address)
        wait_notification(self._receiver, lambda n: n.ready, self.timeout, self.output_tail)

    def reload(self) -> ReloadTiming:
        assert self.main_pid is not None
        old = self.main_pid
        signalled = time.monotonic()
        os.kill(old, signal.SIGUSR2)
        assert self._receiver is not None
        ready = wait_notification(
            self._receiver,
            lambda n: n.ready and n.mainpid is not None,
            self.timeout,
            self.output_tail,
        )
        ready_at = time.monotonic()
        assert ready.mainpid is not None
        self.main_pid = ready.mainpid
        exited = wait_exited([old], self.timeout)
        for child in self._children:
            child.poll()  # reap the first generation, our child
        return ReloadTiming(signalled, ready_at, exited, (old,), (ready.mainpid,))

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            if self._receiver is not None:
                self._receiver.close()


class RunStrategy(_Handed):
    """``gapless run --bind web=ADDRESS -- COMMAND``; reloads through its control socket."""

    name = "run"
    summary = "gapless run holds the socket; gapless reload starts the next generation"
    manager: ClassVar[tuple[str, ...]] = (sys.executable, "-m", "gapless.cli", "run")
    _receiver: NotifyReceiver | None = None
    _reader: DiscardingReader | None = None
    _directory: str | None = None

    def start(self, address: TcpAddress) -> None:
        self.address = address
        self._receiver = NotifyReceiver()
        self._directory = tempfile.mkdtemp(prefix="gapless-bench-")
        self._control = os.path.join(self._directory, "control.sock")
        manager = self._spawn(self._argv(address), None, NOTIFY_SOCKET=self._receiver.address)
        wait_notification(
            self._receiver,
            lambda n: n.ready and n.pid == manager.pid,
            self.timeout,
            self.output_tail,
        )
        # Read on, as systemd does: unread, the queue fills (10 datagrams) and the
        # manager blocks in its next notification.
        self._reader = DiscardingReader(self._receiver)
        self._active = self._active_pid()

    def _argv(self, address: TcpAddress) -> list[str]:
        """The manager's command line (``gapless serve`` has another shape)."""
        argv = [*self.manager, "--bind", f"web={address}", "--control", self._control]
        return [*argv, "--", *self.command]

    def reload(self) -> ReloadTiming:
        old = self._active
        signalled = time.monotonic()
        answer = self._call("reload")
        if not answer.get("ok"):
            raise BenchError(f"gapless reload failed: {answer.get('error')}; {self.output_tail()}")
        ready = time.monotonic()
        self._active = self._active_pid()
        exited = wait_exited([old], self.timeout)
        return ReloadTiming(signalled, ready, exited, (old,), (self._active,))

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            if self._reader is not None:
                self._reader.close()  # and the receiver
            elif self._receiver is not None:
                self._receiver.close()
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)

    def _active_pid(self) -> int:
        status = self._call("status")
        active = [gen["pid"] for gen in status.get("generations", []) if gen["state"] == "active"]
        if not active:
            raise BenchError(f"gapless run reports no active generation: {status}")
        return int(active[0])

    def _call(self, command: str) -> dict[str, Any]:
        try:
            return call(self._control, command, timeout=self.timeout)
        except GaplessError as exc:
            raise BenchError(f"gapless {command} failed: {exc}; {self.output_tail()}") from None


class RunNotifyStrategy(RunStrategy):
    """``gapless run --ready notify``: readiness from READY=1 alone, no /proc polling."""

    name = "run-notify"
    summary = "gapless run --ready notify: as run, readiness from READY=1 only"
    manager = (*RunStrategy.manager, "--ready", "notify")


class ServeStrategy(RunStrategy):
    """``gapless serve``: its lossless drain and its fork server."""

    name = "serve"
    summary = "gapless serve: a drain that loses nothing (uvicorn inside), warm starts"
    default_command = (
        sys.executable, "-m", "gapless.serving.child", "gapless.bench.apps:asgi", "--no-access-log",
    )  # fmt: skip

    def start(self, address: TcpAddress) -> None:
        if importlib.util.find_spec("gapless.serving.child") is None:
            raise BenchError("strategy 'serve' needs gapless.serving.child, which is missing")
        super().start(address)

    def _argv(self, address: TcpAddress) -> list[str]:
        # ``gapless serve`` itself (its fork server included) when COMMAND is a
        # generation of it; any other COMMAND runs under gapless run as given.
        runner = [sys.executable, "-m", "gapless.serving.child"]
        if list(self.command[:3]) != runner:
            return super()._argv(address)
        serve = (sys.executable, "-m", "gapless.cli", "serve", *self.command[3:])
        return [*serve, "--bind", f"web={address}", "--control", self._control]


class ReuseportStrategy(_Handed):
    """The rs/seamless way: the new process listens beside the old on a socket of its
    own (SO_REUSEPORT), then the old one stops and closes its socket."""

    name = "reuseport"
    summary = "SO_REUSEPORT overlap: the new process binds beside the old, then the old stops"

    def start(self, address: TcpAddress) -> None:
        self.address = address
        self._child = self._generation()
        wait_new_pid(address, (), self.timeout)

    def reload(self) -> ReloadTiming:
        assert self.address is not None
        old = self._child
        old_pids = (old.pid, *workers(old.pid))
        signalled = time.monotonic()
        self._child = self._generation()
        wait_new_pid(self.address, old_pids, self.timeout)
        ready = time.monotonic()
        old.send_signal(signal.SIGTERM)
        exited = wait_exited(old_pids, self.timeout)
        old.poll()
        return ReloadTiming(signalled, ready, exited, old_pids, (self._child.pid,))

    def _generation(self) -> Child:
        assert self.address is not None
        family = socket.AF_INET6 if ":" in self.address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.address.host, self.address.port))
        sock.listen(DEFAULT_BACKLOG)
        return self._spawn(self.command, sock)


def _registry() -> dict[str, type[Strategy]]:
    from .servers import (
        GranianReload,
        GunicornUpgrade,
        GunicornUpgradeTerm,
        NaiveRestart,
        SignalReload,
        UvicornReload,
    )

    kinds: list[type[Strategy]] = [
        RunStrategy, RunNotifyStrategy, LibraryStrategy, ServeStrategy, NaiveRestart,
        ReuseportStrategy, GunicornUpgrade, GunicornUpgradeTerm, SignalReload, UvicornReload,
        GranianReload,
    ]  # fmt: skip
    return {kind.name: kind for kind in kinds}


STRATEGIES = _registry()


def make_strategy(name: str, command: Sequence[str] = (), *, timeout: float = 60.0) -> Strategy:
    """The strategy called ``name``, to run ``command`` (empty: its default).

    Raises:
        BenchError: no strategy has that name, or the command does not suit it.
    """
    kind = STRATEGIES.get(name)
    if kind is None:
        raise BenchError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}")
    return kind(command, timeout=timeout)
