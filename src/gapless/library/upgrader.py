"""Library mode: a server process that upgrades itself without dropping a connection.

Example (threaded; asyncio code awaits ``upgrade_async`` and ``wait_stopping_async``)::

    with gapless.Upgrader() as upgrader:           # HUP/USR2 upgrade, TERM/INT stop
        sock = upgrader.listen("127.0.0.1:8000")   # inherited, or opened
        ...                                        # serve sock
        upgrader.ready()                           # the predecessor may stop now
        upgrader.wait_stopping()                   # a successor is ready, or TERM came
        ...                                        # stop accepting, finish what is held

The successor is the same program (``sys.executable`` and ``sys.orig_argv``) or a
configured command. It gets every listener as ``LISTEN_FDS`` and a
``NOTIFY_SOCKET`` of this process's own, and is expected to send ``READY=1``
(``upgrader.ready()`` does); see :mod:`gapless.library.handshake` for the rest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import BindError, NotifyError, SignalsError, UpgradeRefusedError
from ..hooks import Hooks
from ..proc.pidfile import remove_pid_file, write_pid_file
from ..proc.signals import SignalDispatcher, parse_signal
from ..sockets.addresses import Bind, parse_bind
from ..sockets.listeners import (
    DEFAULT_BACKLOG,
    UnixPathStamp,
    listener_address,
    open_listener,
    remove_unix_path,
    stamp_unix_path,
)
from ..systemd.listen_fds import consume_listen_fds, match_binds
from ..systemd.notify import notify
from .handshake import UPSTREAM_VAR, Handshake
from .keeper import keep_pid as keep_pid_in_keeper
from .lifecycle import (
    Action,
    AnnounceReady,
    BeginDrain,
    Drained,
    Event,
    Exit,
    HandOver,
    KillSuccessor,
    Lifecycle,
    Ready,
    RefuseUpgrade,
    ReportFailure,
    SpawnSuccessor,
    StopRequested,
    SuccessorFailed,
    SuccessorReady,
    UpgradeRequested,
)
from .successor import Cancel, start_successor

__all__ = ["DEFAULT_SIGNALS", "Upgrader"]

log = logging.getLogger("gapless")

DEFAULT_SIGNALS: Mapping[str, str] = {
    "HUP": "upgrade",
    "USR2": "upgrade",
    "TERM": "stop",
    "INT": "stop",
}


@dataclass
class _Listener:
    bind: Bind
    sock: socket.socket
    stamp: UnixPathStamp | None  # set when this process or a gapless predecessor bound it


@dataclass
class _Attempt:
    cancel: Cancel
    future: concurrent.futures.Future[int] = field(default_factory=concurrent.futures.Future)


class Upgrader:
    """Owns the listeners of a server process and its upgrade to a successor.

    Args:
        command: the successor's argv; default ``[sys.executable, *sys.orig_argv[1:]]``.
        ready_timeout: seconds the successor has to send READY=1 before it is killed.
        hammer_time: seconds a drain may take before the process exits anyway; -1: no limit.
        pid_file: written atomically with this process's PID once it is ready (with
            ``keep_pid``, the keeper's PID, which stays).
        signals: signal name -> ``"upgrade"`` or ``"stop"``; default :data:`DEFAULT_SIGNALS`.
        environ: the environment to read inherited sockets from (default ``os.environ``).
        keep_pid: keep the PID of the process that was started across every upgrade,
            for init systems that follow one PID: that process forks here and stays
            as a thin keeper, which never returns from this call; the server goes
            on in the child. See :mod:`gapless.library.keeper`.
    """

    def __init__(
        self,
        *,
        command: Sequence[str] | None = None,
        ready_timeout: float = 60.0,
        hammer_time: float = 30.0,
        pid_file: str | os.PathLike[str] | None = None,
        signals: Mapping[str, str] | None = None,
        environ: dict[str, str] | None = None,
        keep_pid: bool = False,
    ) -> None:
        self._environ = os.environ if environ is None else environ
        self.keep_pid = keep_pid
        self.command = list(command) if command else [sys.executable, *sys.orig_argv[1:]]
        self.ready_timeout = ready_timeout
        self.pid_file = pid_file
        self.hooks = Hooks()
        self._signal_map = _parse_signal_map(signals or DEFAULT_SIGNALS)
        if keep_pid and UPSTREAM_VAR not in self._environ:  # the first version only
            keep_pid_in_keeper(self._environ, list(self._signal_map), pid_file)
        self._cwd = os.getcwd()
        self._lock = threading.RLock()
        self._machine = Lifecycle(hammer_time=hammer_time)
        self._listeners: list[_Listener] = []
        self._inherited = consume_listen_fds(self._environ)
        self._handshake = Handshake.take(self._environ)
        self._attempt: _Attempt | None = None
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._signals: SignalDispatcher | None = None
        self._closed = False
        self._new_cancel = Cancel  # a seam: tests act inside the upgrade's last steps

    # Listeners ---------------------------------------------------------------

    def listen(
        self, bind: str | Bind, *, backlog: int = DEFAULT_BACKLOG, mode: int | None = None
    ) -> socket.socket:
        """Return the listening socket for ``bind``: inherited from the predecessor
        (matched by name, then by address) or opened now.

        Raises:
            BindError: the bind string is invalid.
            ListenError: a new socket could not be opened (in use, permission...).
        """
        parsed = parse_bind(bind) if isinstance(bind, str) else bind
        with self._lock:
            if any(existing.bind == parsed for existing in self._listeners):
                raise BindError(f"invalid bind {str(parsed)!r}: listen() was already called for it")
            plan = match_binds(
                [parsed], [(name, listener_address(sock)) for name, sock in self._inherited]
            )
            if 0 in plan.reuse:
                _, sock = self._inherited.pop(plan.reuse[0])
                # A path systemd bound is systemd's to remove; one a gapless
                # predecessor bound is ours once we are the last generation.
                stamp = stamp_unix_path(sock) if self._handshake.from_gapless else None
                log.info("listening on %s (inherited)", _describe(sock))
            else:
                sock = open_listener(parsed, backlog=backlog, mode=mode)
                stamp = stamp_unix_path(sock)
                log.info("listening on %s", _describe(sock))
            self._listeners.append(_Listener(parsed, sock, stamp))
            return sock

    @property
    def listeners(self) -> list[socket.socket]:
        """The sockets handed to a successor, in ``listen()`` order."""
        return [listener.sock for listener in self._listeners]

    # Lifecycle ---------------------------------------------------------------

    def ready(self) -> None:
        """Report that this process serves: READY=1 to the predecessor or systemd,
        the PID file, then the ``on_ready`` hooks. Inherited sockets that no
        ``listen()`` asked for are closed now (their port changed or was dropped)."""
        self._feed(Ready())

    def upgrade(self, timeout: float | None = None) -> int:
        """Start the successor and wait until it is ready; return its PID.

        A call while an upgrade runs joins it. On success this process is told
        to stop (see :meth:`wait_stopping`).

        Raises:
            SuccessorSpawnError: the command could not be started.
            SuccessorExitedError: it exited before READY=1 (exit code, stderr tail).
            SuccessorTimeoutError: no READY=1 within ``ready_timeout``; it was killed.
            UpgradeRefusedError: this process is starting or already stopping.
        """
        return self._request_upgrade().result(timeout)

    async def upgrade_async(self) -> int:
        """:meth:`upgrade` for asyncio code."""
        return await asyncio.wrap_future(self._request_upgrade())

    def stop(self) -> None:
        """Begin a graceful stop, as TERM does; a second call exits at once."""
        self._feed(StopRequested())

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def wait_stopping(self, timeout: float | None = None) -> bool:
        """Block until this process must stop accepting; False on timeout."""
        return self._stopping.wait(timeout)

    async def wait_stopping_async(self) -> None:
        """Await the moment this process must stop accepting."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._stopping.is_set():
                return
            self._waiters.append((loop, future))
        await future

    def close(self) -> None:
        """Finish: close the listeners (unlinking unix paths only when no successor
        took them over), remove the PID file if it is ours, restore signal handlers."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            final = self._machine.successor is None
            if self._machine.state.value != "stopped":
                self._carry_out(self._machine.handle(Drained(), time.monotonic()))
        self._release(final)
        self._finished.set()

    def __enter__(self) -> Upgrader:
        self.install_signal_handlers()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.close()
        finally:
            self.restore_signal_handlers()

    # Signals -----------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Install the signal mapping (main thread only); :meth:`close` restores it."""
        dispatcher = SignalDispatcher({signum: self._on_signal for signum in self._signal_map})
        self._signals = dispatcher.__enter__()

    def restore_signal_handlers(self) -> None:
        if self._signals is not None:
            self._signals.__exit__()
            self._signals = None

    def _on_signal(self, signum: signal.Signals) -> None:
        if self._signal_map[signum] == "upgrade":
            log.info("%s: upgrading", signum.name)
            self._request_upgrade().add_done_callback(_log_outcome)
        else:
            log.info("%s: stopping", signum.name)
            self.stop()

    # Driver ------------------------------------------------------------------

    def _request_upgrade(self) -> concurrent.futures.Future[int]:
        with self._lock:
            if self._attempt is not None and not self._attempt.future.done():
                return self._attempt.future
            actions = self._machine.handle(UpgradeRequested(), time.monotonic())
            refused = [a for a in actions if isinstance(a, RefuseUpgrade)]
            if refused:
                future: concurrent.futures.Future[int] = concurrent.futures.Future()
                future.set_exception(UpgradeRefusedError(refused[0].reason))
                return future
            self._carry_out(actions)
            assert self._attempt is not None
            return self._attempt.future

    def _feed(self, event: Event) -> None:
        with self._lock:
            self._carry_out(self._machine.handle(event, time.monotonic()))

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, AnnounceReady):
                self._announce_ready()
            elif isinstance(action, SpawnSuccessor):
                self._attempt = _Attempt(self._new_cancel())
                threading.Thread(
                    target=self._run_attempt,
                    args=(self._attempt,),
                    name="gapless-upgrade",
                    daemon=True,
                ).start()
            elif isinstance(action, KillSuccessor) and self._attempt is not None:
                self._attempt.cancel.set()
            elif isinstance(action, HandOver):
                self._hand_over(action.pid)
            elif isinstance(action, BeginDrain):
                self._begin_drain(action)
            elif isinstance(action, ReportFailure):
                log.error("upgrade failed: %s", action.reason)
            elif isinstance(action, Exit) and action.hurried:
                self._exit_now(action)

    def _announce_ready(self) -> None:
        for _, sock in self._inherited:
            log.info("closing inherited %s: no longer requested", _describe(sock))
            sock.close()
        self._inherited.clear()
        if self.pid_file is not None and not self.keep_pid:
            write_pid_file(self.pid_file)  # before READY=1: whoever reads it then finds it
        try:
            notify(ready=True, environ=self._environ)
        except NotifyError as exc:
            log.warning("could not report readiness: %s", exc)
        # The predecessor relays MAINPID and READY to systemd; from now on this
        # process speaks to systemd itself.
        self._handshake.complete(self._environ)
        self.hooks.run("on_ready")

    def _run_attempt(self, attempt: _Attempt) -> None:
        try:
            self.hooks.run("before_upgrade")
            with contextlib.suppress(NotifyError):
                notify(reloading=True, status="upgrading", environ=self._environ)
            child = start_successor(
                self.command,
                [(listener.bind.name, listener.sock) for listener in self._listeners],
                timeout=self.ready_timeout,
                cancel=attempt.cancel,
                environ=self._environ,
                cwd=self._cwd,
            )
        except Exception as exc:
            with contextlib.suppress(NotifyError):
                notify(ready=True, status=f"upgrade failed: {exc}", environ=self._environ)
            self._feed(SuccessorFailed(str(exc)))
            attempt.future.set_exception(exc)
            return
        finally:
            attempt.cancel.close()
        with self._lock:
            actions = self._machine.handle(SuccessorReady(child.pid), time.monotonic())
            if not any(isinstance(action, HandOver) for action in actions):
                # A stop raced the successor's READY=1: this process stops, and so
                # must the successor, or two generations would be left serving.
                child.kill_group(signal.SIGKILL)
                attempt.future.set_exception(UpgradeRefusedError("cannot upgrade: stopping"))
                return
            self._carry_out(actions)
        attempt.future.set_result(child.pid)

    def _hand_over(self, pid: int) -> None:
        log.info(
            "successor pid %d is ready; this process (pid %d) stops accepting", pid, os.getpid()
        )
        with contextlib.suppress(NotifyError):
            notify(mainpid=pid, ready=True, environ=self._environ)
        self.hooks.run("after_upgrade", pid)

    def _begin_drain(self, action: BeginDrain) -> None:
        if action.final:
            with contextlib.suppress(NotifyError):
                notify(stopping=True, environ=self._environ)
        self.hooks.run("before_shutdown")
        self._stopping.set()
        for loop, future in self._waiters:
            loop.call_soon_threadsafe(_resolve, future)
        self._waiters.clear()
        if action.deadline is not None:
            threading.Thread(
                target=self._hammer, args=(action.deadline,), name="gapless-hammer", daemon=True
            ).start()

    def _hammer(self, deadline: float) -> None:
        if self._finished.wait(max(0.0, deadline - time.monotonic())):
            return
        log.warning("hammer time: the drain did not finish by its deadline; exiting")
        with self._lock:
            self._closed = True
            final = self._machine.successor is None
        self._release(final)
        os._exit(1)

    def _exit_now(self, action: Exit) -> None:
        log.warning("second stop request: exiting at once")
        self._release(action.final)
        os._exit(1)

    def _release(self, final: bool) -> None:
        for listener in self._listeners:
            if final:
                remove_unix_path(listener.stamp)
            listener.sock.close()
        if self.pid_file is not None:
            remove_pid_file(self.pid_file)
        self.hooks.run("after_shutdown")


def _parse_signal_map(mapping: Mapping[str, str]) -> dict[signal.Signals, str]:
    result = {}
    for name, what in mapping.items():
        if what not in ("upgrade", "stop"):
            raise SignalsError(
                f"invalid signal action {what!r} for {name}: use 'upgrade' or 'stop'"
            )
        result[parse_signal(name)] = what
    return result


def _describe(sock: socket.socket) -> str:
    return f"{listener_address(sock)} (fd {sock.fileno()})"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _log_outcome(future: concurrent.futures.Future[int]) -> None:
    exc = future.exception()
    if exc is None:
        log.info("upgrade done: successor pid %d", future.result())
    elif isinstance(exc, UpgradeRefusedError):
        log.warning("%s", exc)
