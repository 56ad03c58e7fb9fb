"""Library mode: a server process that upgrades itself without dropping a connection.

Over 300 lines on purpose: the public ``Upgrader`` (its documented methods are
most of it) and the table that carries out the lifecycle's actions share one
lock and one state; the pieces that stand alone are in ``attempt``,
``listenerset``, ``shutdown`` and ``stopping``.

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

Threads: signals are acted on by the dispatcher's thread, an upgrade runs on a
thread of its own, the drain deadline (the "hammer") on a third. Every move of
the lifecycle happens under one lock; the hammer takes none, so that nothing
holding it (a hook blocked for ever) keeps a process past its deadline. A hard
exit (the deadline, a second stop request) runs no hook: see
:mod:`gapless.library.shutdown`.
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
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from ..errors import NotifyError, SignalsError, UpgradeRefusedError
from ..hooks import Hooks
from ..proc.pidfile import write_pid_file
from ..proc.signals import SignalDispatcher, parse_signal
from ..proc.spawn import Child
from ..sockets.addresses import Bind, parse_bind
from ..sockets.listeners import DEFAULT_BACKLOG
from ..systemd.listen_fds import consume_listen_fds
from ..systemd.notify import notify
from .attempt import Attempt
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
    State,
    StopRequested,
    SuccessorFailed,
    SuccessorReady,
    UpgradeRequested,
)
from .listenerset import ListenerSet
from .shutdown import hard_exit, release
from .stopping import Stopping
from .successor import Cancel, start_successor

__all__ = ["DEFAULT_SIGNALS", "Upgrader"]

# How long the handover waits for asyncio servers to take the step after their
# wait_stopping_async() (where they stop accepting): only a loop blocked by its
# own code takes longer.
_ACK_WAIT = 5.0

log = logging.getLogger("gapless")

DEFAULT_SIGNALS: Mapping[str, str] = {
    "HUP": "upgrade",
    "USR2": "upgrade",
    "TERM": "stop",
    "INT": "stop",
}


class Upgrader:
    """Owns the listeners of a server process and its upgrade to a successor.

    Args:
        command: the successor's argv; default ``[sys.executable, *sys.orig_argv[1:]]``.
        ready_timeout: seconds the successor has to send READY=1 before it is killed.
        drain_timeout: seconds a drain may take before the process exits anyway
            (the "hammer"); -1: no limit. ``gapless run --drain-timeout`` and
            ``gapless serve --drain-timeout`` mean the same.
        pid_file: written atomically with this process's PID once it is ready (with
            ``keep_pid``, the keeper's PID, which stays).
        signals: signal name -> ``"upgrade"`` or ``"stop"``; default :data:`DEFAULT_SIGNALS`.
        environ: the environment to read inherited sockets from (default ``os.environ``).
        keep_pid: keep the PID of the process that was started across every upgrade,
            for init systems that follow one PID: that process forks here and stays
            as a thin keeper, which never returns from this call; the server goes
            on in the child. See :mod:`gapless.library.keeper`.
        hammer_time: the former name of ``drain_timeout``, accepted with a
            ``DeprecationWarning`` until the next release.
    """

    def __init__(
        self,
        *,
        command: Sequence[str] | None = None,
        ready_timeout: float = 60.0,
        drain_timeout: float = 30.0,  # written out: the API reference shows it
        pid_file: str | os.PathLike[str] | None = None,
        signals: Mapping[str, str] | None = None,
        environ: dict[str, str] | None = None,
        keep_pid: bool = False,
        hammer_time: float | None = None,
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
        self._machine = Lifecycle(drain_timeout=_drain_timeout(drain_timeout, hammer_time))
        inherited = consume_listen_fds(self._environ)
        self._handshake = Handshake.take(self._environ)
        self._listeners = ListenerSet(inherited, self._handshake.from_gapless)
        # A predecessor started this process as the leader of a group of its own;
        # the workers it forks join it, and the hammer kills them with it.
        self._own_group = self._handshake.from_gapless and os.getpgrp() == os.getpid()
        self._attempt: Attempt | None = None
        self._stopping = Stopping()
        self._finished = threading.Event()
        self._signals: SignalDispatcher | None = None
        self._closed = False
        self._new_cancel = Cancel  # a seam: tests act inside the upgrade's last steps
        self._pending_handover: HandOver | None = None

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
            return self._listeners.listen(parsed, backlog=backlog, mode=mode)

    @property
    def listeners(self) -> list[socket.socket]:
        """The sockets handed to a successor, in ``listen()`` order."""
        return self._listeners.sockets

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
    def drain_timeout(self) -> float:
        """Seconds a drain may take before the process exits anyway; -1: no limit."""
        return self._machine.drain_timeout

    @property
    def stopping(self) -> bool:
        """Whether this process was told to stop accepting."""
        return self._stopping.is_set()

    def wait_stopping(self, timeout: float | None = None) -> bool:
        """Block until this process must stop accepting; False on timeout."""
        return self._stopping.wait(timeout)

    async def wait_stopping_async(self) -> None:
        """Await the moment this process must stop accepting."""
        await self._stopping.wait_async()

    def close(self) -> None:
        """Finish: close the listeners (unlinking unix paths only when no successor
        took them over), remove the PID file if it is ours, run the ``after_shutdown``
        hooks. A successor still starting is killed first, and waited for.

        Raises:
            PidFileError: the PID file could not be removed (all else was done).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._machine.state is not State.STOPPED:
                    self._carry_out(self._machine.handle(Drained(), time.monotonic()))
            finally:
                final = self._machine.successor is None
                attempt = self._attempt
        try:
            self._deliver_handover()  # the server stopped accepting: it calls close()
            error = release(self._listeners.items, self.pid_file, final)
            self.hooks.run("after_shutdown")
        finally:
            self._finished.set()
        if attempt is not None:
            attempt.wait_cancelled()
        if error is not None:
            raise error

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
            if self._attempt is not None and self._attempt.running:
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

    def _carry_out(self, actions: Sequence[Action]) -> None:
        for action in actions:
            _ACTIONS[type(action)](self, action)

    def _spawn_successor(self, action: SpawnSuccessor) -> None:
        attempt = Attempt(self._new_cancel(), self._start_successor, self._settle)
        self._attempt = attempt
        attempt.begin()

    def _kill_successor(self, action: KillSuccessor) -> None:
        if self._attempt is not None:
            self._attempt.cancel.set()

    def _report_failure(self, action: ReportFailure) -> None:
        log.error("upgrade failed: %s", action.reason)

    def _refuse(self, action: RefuseUpgrade) -> None:
        pass  # _request_upgrade answers the caller with it

    def _exit(self, action: Exit) -> None:
        if action.hurried:
            log.warning("second stop request: exiting at once")
            self._hard_exit(action.final)

    def _announce_ready(self, action: AnnounceReady) -> None:
        self._listeners.close_unclaimed()
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

    def _start_successor(self, cancel: Cancel) -> Child:
        """On the attempt's thread, with no lock held: hooks may take their time."""
        self.hooks.run("before_upgrade")
        with contextlib.suppress(NotifyError):
            notify(reloading=True, status="upgrading", environ=self._environ)
        return start_successor(
            self.command,
            self._listeners.for_successor(),
            timeout=self.ready_timeout,
            cancel=cancel,
            environ=self._environ,
            cwd=self._cwd,
        )

    def _settle(self, attempt: Attempt, outcome: Child | BaseException) -> bool:
        """Feed the attempt's outcome to the lifecycle; True if the successor took over."""
        failed = isinstance(outcome, BaseException)
        if failed and not attempt.cancel.is_set():
            with contextlib.suppress(NotifyError):
                notify(ready=True, status=f"upgrade failed: {outcome}", environ=self._environ)
        with self._lock:
            # Closed under the lock, so no stop() can fall between the close and
            # this move and write to a pipe that is gone (issue 10, case 4).
            attempt.cancel.close()
            event: Event = (
                SuccessorFailed(str(outcome))
                if isinstance(outcome, BaseException)
                else SuccessorReady(outcome.pid)
            )
            actions = self._machine.handle(event, time.monotonic())
            try:
                self._carry_out(actions)
            except Exception:
                log.exception("while acting on the upgrade's outcome")
        if self._pending_handover is None:
            return any(isinstance(action, HandOver) for action in actions)
        # Without the lock: an asyncio server stops accepting on its own loop,
        # whose next step may call close(), which takes the lock and delivers the
        # handover itself if it comes first.
        if not self._stopping.wait_acknowledged(_ACK_WAIT):
            log.warning("an event loop did not take the stop within %g s", _ACK_WAIT)
        self._deliver_handover()
        return True

    def _hand_over(self, action: HandOver) -> None:
        """Delivered once this process stopped accepting (see _deliver_handover)."""
        self._pending_handover = action

    def _deliver_handover(self) -> None:
        """Tell systemd the successor's PID and run the after_upgrade hooks, once:
        from the upgrade's thread when every asyncio server took the stop, or from
        close(), whichever comes first. Under the lock, so that close() returns
        (and the process may exit) only once it is done."""
        with self._lock:
            action, self._pending_handover = self._pending_handover, None
            if action is None:
                return
            log.info(
                "successor pid %d is ready; this process (pid %d) stops accepting",
                action.pid,
                os.getpid(),
            )
            with contextlib.suppress(NotifyError):
                notify(mainpid=action.pid, ready=True, environ=self._environ)
            self.hooks.run("after_upgrade", action.pid)

    def _begin_drain(self, action: BeginDrain) -> None:
        # The deadline first: a before_shutdown hook that never returns must not
        # keep the process for ever.
        if action.deadline is not None:
            threading.Thread(
                target=self._hammer, args=(action.deadline,), name="gapless-hammer", daemon=True
            ).start()
        if action.final:
            with contextlib.suppress(NotifyError):
                notify(stopping=True, environ=self._environ)
        self.hooks.run("before_shutdown")
        self._stopping.set()

    def _hammer(self, deadline: float) -> None:
        if self._finished.wait(max(0.0, deadline - time.monotonic())):
            return
        log.warning("drain_timeout passed: the drain did not finish by its deadline; exiting")
        self._hard_exit(self._machine.successor is None)  # no lock: a hook may hold it

    def _hard_exit(self, final: bool) -> NoReturn:
        pending = self._pending_handover  # read without the lock, which a hook may hold
        if pending is not None:
            with contextlib.suppress(Exception):
                notify(mainpid=pending.pid, ready=True, environ=self._environ)
        hard_exit(self._listeners.items, self.pid_file, final=final, own_group=self._own_group)


_ACTIONS: dict[type, Callable[[Upgrader, Any], None]] = {
    AnnounceReady: Upgrader._announce_ready,
    SpawnSuccessor: Upgrader._spawn_successor,
    KillSuccessor: Upgrader._kill_successor,
    HandOver: Upgrader._hand_over,
    BeginDrain: Upgrader._begin_drain,
    ReportFailure: Upgrader._report_failure,
    RefuseUpgrade: Upgrader._refuse,
    Exit: Upgrader._exit,
}


def _drain_timeout(drain_timeout: float, hammer_time: float | None) -> float:
    """The drain deadline from the current name or the deprecated one (gapless
    run and serve call it --drain-timeout; one name for one concept)."""
    if hammer_time is None:
        return drain_timeout
    if drain_timeout != 30.0:  # Upgrader's default: both were given
        raise TypeError(
            "Upgrader: hammer_time= and drain_timeout= both given: keep drain_timeout= only"
        )
    warnings.warn(
        "Upgrader(hammer_time=) is deprecated: use drain_timeout=, the same seconds",
        DeprecationWarning,
        stacklevel=3,
    )
    return hammer_time


def _parse_signal_map(mapping: Mapping[str, str]) -> dict[signal.Signals, str]:
    result = {}
    for name, what in mapping.items():
        if what not in ("upgrade", "stop"):
            raise SignalsError(
                f"invalid signal action {what!r} for {name}: use 'upgrade' or 'stop'"
            )
        result[parse_signal(name)] = what
    return result


def _log_outcome(future: concurrent.futures.Future[int]) -> None:
    exc = future.exception()
    if exc is None:
        log.info("upgrade done: successor pid %d", future.result())
    elif isinstance(exc, UpgradeRefusedError):
        log.warning("%s", exc)
