"""``gapless run``: the manager that holds the sockets and runs generations of a server.

Over 300 lines, a third of them this docstring: setup, the select loop and the
signal and command dispatch read as one story; the features live in run/extras.

The manager opens the listening sockets once and keeps them for its whole life;
each generation of the server gets them as ``LISTEN_FDS`` (fd 3 onward) with a
``NOTIFY_SOCKET`` of the manager's. A reload starts the next generation beside
the active one; when it is ready the old one gets the stop signal and drains by
its deadline. Nothing is proxied: the children accept on the manager's sockets.

The driver is one ``selectors`` loop over: a signal wakeup fd, each child's
pidfd and stderr pipe, the notify socket, the control socket and its clients
(gapless.run.clients), with the next deadline as the timeout. An idle manager sleeps in ``select()``
with no timeout at all. The only periodic wakeup is the ``accept`` readiness
check, every 20 ms, and only while a generation is starting. The decisions are
in :class:`~gapless.run.generations.Generations`, their carrying out in
:class:`~gapless.run.driver.Driver`; this module owns the sockets, the
signals and the control commands.

The manager's failure is never the service's (invariant 7): an exception in a
control command or a notify datagram's handler drops that client or datagram
alone; one in the loop itself re-executes the manager in place, with its pid,
sockets and generations (gapless.run.inplace); only an explicit stop ends the
generations. The notify socket is a path in the user's private (0700) control
directory, so only the manager's user (and root) can reach it.

Example::

    config = ManagerConfig(command=["python", "-m", "gapless.demo", "--bind", "web=:0"],
                           binds=[parse_bind("web=127.0.0.1:8000")])
    sys.exit(Manager(config).run())
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import selectors
import signal
import socket
import time
from collections.abc import Mapping
from typing import Any

from .._version import __version__
from ..errors import PidFileError
from ..proc.pidfile import read_pid_file, remove_pid_file, write_pid_file
from ..proc.subreaper import set_child_subreaper
from ..proc.wakeup import SignalWakeup
from ..sockets.listeners import listener_address, remove_unix_path
from ..systemd.notify_receiver import NotifyReceiver
from .clients import Clients
from .commands import Commands
from .config import Listener, ManagerConfig, ReadyMode, open_listeners
from .control import (
    CommandTable,
    ControlConnection,
    ControlServer,
    Message,
    default_control_path,
    reply,
)
from .driver import Driver
from .eventlog import EventLog
from .extras import Extra
from .extras.fdstore import FdStore
from .extras.handoff import Handoff
from .extras.health import Health
from .extras.metrics import Metrics
from .extras.shutdown_delay import ShutdownDelay
from .faults import Faults
from .generations import ReloadResult
from .inplace import InPlace
from .notify_socket import private_receiver
from .reexec import Handover
from .state import config_from_json, listeners_from_json, stamp_from_json
from .upgrade_check import python_problem
from .upstream import Upstream

__all__ = ["Manager", "ManagerConfig", "ReadyMode"]

_HANDLED = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGCHLD,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
_FORWARDED = (signal.SIGUSR1, signal.SIGUSR2)


class Manager:
    """Runs generations of ``config.command`` on sockets it keeps; see the module doc.

    Args:
        config: the settings.
        environ: the environment the children inherit (default ``os.environ``);
            ``NOTIFY_SOCKET`` and ``LISTEN_*`` in it are the manager's own.
        resume: the state of the manager this one replaces in place; see :meth:`resume`.
        lifeline: with ``--handoff``, the pipe whose EOF says the supervised front
            exited (see :mod:`gapless.run.extras.front`).
    """

    def __init__(
        self,
        config: ManagerConfig,
        environ: Mapping[str, str] | None = None,
        resume: Mapping[str, Any] | None = None,
        lifeline: int | None = None,
    ) -> None:
        self.config = config
        self._resume = resume
        self._environ: dict[str, str] = dict(os.environ if environ is None else environ)
        self._log = EventLog(config.log_format)
        self._upstream = Upstream(self._environ.pop("NOTIFY_SOCKET", ""), self._log)
        self._control_path = config.control_path or default_control_path()
        self._selector = selectors.DefaultSelector()
        self._log.attach(self._selector)  # lines a slow reader left wait for writability
        self._fdstore = FdStore(self._environ, self._upstream, self._log)  # takes FDSTORE out
        self._signals: SignalWakeup | None = None  # caught while run() runs
        self._unhandled: collections.deque[signal.Signals] = collections.deque()
        self._listeners: list[Listener] = []
        self._born = time.monotonic() if resume is None else float(resume["born"])
        self._upgrades = 0 if resume is None else int(resume["upgrades"])
        self._recoveries = 0 if resume is None else int(resume.get("recoveries", 0))
        recovered_at = () if resume is None else resume.get("recovered_at", ())
        self._recovered_at = tuple(float(when) for when in recovered_at)
        self._faults = Faults(self._environ)
        self._driver = Driver(
            config,
            self._environ,
            self._selector,
            self._log,
            self._upstream,
            self._answer,
            self._faults,
        )
        self._delay = ShutdownDelay(config.shutdown_delay, self._driver, self._log, self._upstream)
        self._health = Health(
            config.health_bind,
            self._selector,
            self._log,
            self._driver,
            self._delay,
            self._metrics() if config.health_bind is not None else None,
        )
        self._handoff = Handoff(
            config, self._log, self._selector, self._driver, self._delay, self._health, lifeline
        )
        # Ticked in this order (the health endpoint's answer last) and closed in it too
        # (the handoff first: it may disown paths a taker uses).
        self._extras: tuple[Extra, ...] = (self._handoff, self._delay, self._health, self._fdstore)
        self._in_place = InPlace(
            self._log,
            self._selector,
            self._environ,
            self._upstream,
            self._handover,
            self._upgrade_refusal,
            self._pending_signals,
            _HANDLED,
        )
        self._commands = Commands(self._driver, self._log, self._upstream)
        self._clients = Clients(self._selector, self._log, self._command_table())

    def _metrics(self) -> Metrics:
        """The counters ``/metrics`` shows, fed from now on by the event log."""
        started_at = time.time() - (time.monotonic() - self._born)
        metrics = Metrics(started_at, self._upgrades, self._recoveries)
        carried = None if self._resume is None else self._resume.get("health")
        if carried is not None and carried.get("metrics") is not None:
            try:
                metrics.restore(carried["metrics"])  # the counters before the exec in place
            except (KeyError, TypeError, ValueError) as exc:  # another version's: not fatal
                metrics = Metrics(started_at, self._upgrades, self._recoveries)
                self._log.event("warning", f"metrics not carried over ({exc!r}); from zero")
        self._log.subscribe(metrics)
        return metrics

    def _command_table(self) -> CommandTable:
        table = CommandTable()
        self._commands.register(table)
        table.register("status", "the generations, the listeners and the last reload", self._status)
        table.register(
            "upgrade",
            "exec a new gapless in place, keeping pid, sockets, children",
            self._in_place.upgrade,
            {"python": python_problem},
        )
        self._faults.register(table)
        return table

    @classmethod
    def resume(cls, state: Mapping[str, Any]) -> Manager:
        """The manager that carries on from ``state``, written by the one it replaced
        with an exec in place (see :mod:`gapless.run.reexec`)."""
        control_path = state["control"]["path"]
        return cls(config_from_json(state["config"], control_path), resume=state)

    def run(self) -> int:
        """Open everything, start generation 1 and serve until stopped.

        Returns:
            The exit code: 0 after a stop, 1 when no generation could be started.

        Raises:
            GaplessError: a socket, the control socket or the PID file could not be
                set up; nothing was started then.
        """
        driver = self._driver
        with contextlib.ExitStack() as stack:
            self._open(stack)
            if self._resume is not None:
                self._log.event("resumed", f"resumed in place as pid {os.getpid()} ({__version__})")
            while driver.exit_code is None:
                try:
                    self._turn()
                except Exception as exc:  # invariant 7: never the service's failure
                    self._in_place.recover(exc)
        # Answered only now, once the sockets, socket paths and PID file are gone,
        # so that `gapless stop && gapless run ...` finds everything free.
        self._log.event("stopped", f"stopped with exit code {driver.exit_code}")
        self._commands.answer_stopped()
        self._log.drain(timeout=1.0)  # lines a slow reader left, bounded: it may never read
        return driver.exit_code

    def _turn(self) -> None:
        """One turn of the loop: wait for the next event or deadline, handle it."""
        driver = self._driver
        times = [driver.wake_at(), self._clients.wake_at(), self._in_place.wake_at()]
        times += [extra.wake_at() for extra in self._extras]
        wake_at = min((when for when in times if when is not None), default=None)
        timeout = None if wake_at is None else max(0.0, wake_at - time.monotonic())
        for key, _ in self._selector.select(timeout):
            key.data()
        now = time.monotonic()
        driver.tick(now)
        for extra in self._extras:
            extra.tick(now)
        self._clients.tick(now)
        self._in_place.tick(now)
        self._faults.check("loop")

    # Setup --------------------------------------------------------------------

    def _open(self, stack: contextlib.ExitStack) -> None:
        stack.callback(self._selector.close)
        stack.callback(self._driver.close)  # they are gone, or setup failed
        stack.callback(self._in_place.close)
        if not set_child_subreaper():
            self._log.event("warning", "cannot become a child subreaper; orphans go to init")
        stack.callback(self._close_listeners)
        receiver = self._open_sockets(stack)
        # Signals are caught (queued for the loop) before the PID file names us, and
        # the PID file is written before generation 1: a failure then starts nothing.
        self._catch_signals(stack)
        if self.config.pid_file is not None:
            self._claim_pid_file(self.config.pid_file)
            stack.callback(remove_pid_file, self.config.pid_file)
        self._driver.start(self._listeners, receiver, boot=self._resume is None)
        if self._resume is not None:
            self._driver.adopt(self._resume)
            self._health.tick(time.monotonic())  # say serving before the first probe

    def _claim_pid_file(self, path: str) -> None:
        """Write the PID file; raises PidFileError before generation 1 only. Resumed
        in place (same pid, generations serving), a file that cannot be rewritten is a
        warning: the one there names this pid already, unless someone changed it."""
        if self._resume is None:
            write_pid_file(path)
            return
        with contextlib.suppress(PidFileError):
            if read_pid_file(path) == os.getpid():
                return
        try:
            write_pid_file(path)
        except PidFileError as exc:
            self._log.event("warning", f"{exc}; serving on without it")

    def _open_sockets(self, stack: contextlib.ExitStack) -> NotifyReceiver:
        state = self._resume
        if state is None:
            taken = self._handoff.take_over()  # --handoff: a running instance's sockets
            self._listeners = open_listeners(self.config.binds, self._environ, taken)
            # In the stack at once: its socket file must go if what follows fails.
            receiver = stack.enter_context(private_receiver(self._environ, self._log))
            private = self.config.control_path is None
            control = self._handoff.control_server(self._control_path, private)
        else:
            self._listeners = listeners_from_json(state["listeners"])
            notify = state["notify"]
            adopted = NotifyReceiver.adopt(notify["fd"], notify["address"], notify.get("identity"))
            receiver = stack.enter_context(adopted)
            stamp = stamp_from_json(state["control"]["stamp"])
            control = ControlServer.adopt(state["control"]["fd"], self._control_path, stamp)
        for listener in self._listeners:
            _no_delay(listener.sock)
            where = listener_address(listener.sock)
            label = f" as {listener.name}" if listener.name else ""
            kept = "" if state is None else " (kept across the exec)"
            self._log.event("listening", f"listening on {where}{label}{kept}", address=str(where))
        self._receiver = receiver
        on_notify = functools.partial(self._driver.on_notify, receiver)
        self._selector.register(receiver, selectors.EVENT_READ, on_notify)
        self._control = control
        stack.callback(self._close_control)
        on_control = functools.partial(self._clients.accept, control)
        self._selector.register(control, selectors.EVENT_READ, on_control)
        for extra in reversed(self._extras):  # first the handoff: it may disown paths
            stack.callback(extra.close)
        if state is None:
            self._health.open(self._handoff.lent("health"), serving=self._handoff.taking_over)
        else:
            self._health.adopt(state.get("health"))  # kept across the exec
        self._handoff.serve(self._listeners, control)
        self._fdstore.store(self._listeners)
        return receiver

    def _catch_signals(self, stack: contextlib.ExitStack) -> None:
        self._signals = stack.enter_context(SignalWakeup(_HANDLED))
        # After an exec in place they were blocked across it: unblocked only now that
        # our handlers are installed, the pending ones are delivered (queued) now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)
        self._selector.register(self._signals, selectors.EVENT_READ, self._on_signal)

    def _close_listeners(self) -> None:
        # Not after a crash: a manager started anew (or systemd) may still use the paths.
        final = self._driver.exit_code is not None
        for listener in self._listeners:
            listener.sock.close()
            if final:
                remove_unix_path(listener.stamp)

    def _close_control(self) -> None:
        self._clients.close(keep=self._commands.stop_waiters)
        self._control.close()

    def _pending_signals(self) -> list[signal.Signals]:
        """The signals caught but not handled yet, taken out of the queue."""
        pending = list(self._unhandled)
        self._unhandled.clear()
        return pending if self._signals is None else pending + self._signals.take()

    # Signals ------------------------------------------------------------------

    def _on_signal(self) -> None:
        assert self._signals is not None
        # One at a time: if handling one raises, the rest wait across the recovery's exec.
        self._unhandled.extend(self._signals.take())
        while self._unhandled:
            received = self._unhandled.popleft()
            if received == signal.SIGCHLD:
                self._in_place.collect()  # first: its exit status is its own
                self._driver.on_sigchld()
            elif received == signal.SIGHUP:
                self._commands.request_reload(None, "SIGHUP")
            elif received in _FORWARDED:
                self._driver.forward(received)
            elif not self._delay.delay_stop(received):
                what = "requested" if self._driver.running else "hurried"
                self._driver.request_stop(f"stop {what} by {received.name}", signal=received.name)

    # Control commands ---------------------------------------------------------

    def _answer(self, result: ReloadResult, stderr: list[str]) -> None:
        self._commands.answer(result, stderr)

    def _status(self, connection: ControlConnection, request: Message) -> None:
        about = {
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self._born, 3),
            "command": list(self.config.command),
            "ready": self.config.ready.text,
            "control": self._control_path,
            "version": __version__,
            "upgrades": self._upgrades,
            "recoveries": self._recoveries,
            "restarts": self._restarts_status(),
        }
        connection.send(reply(True, **self._driver.status(self._listeners, about)))

    def _restarts_status(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"handoff": None, "health": None, "shutdown_delay_left": None}
        for extra in self._extras:
            fields.update(extra.status())
        return fields

    def _upgrade_refusal(self) -> str | None:
        refusals = (extra.upgrade_refusal() for extra in self._extras)
        return next((refusal for refusal in refusals if refusal is not None), None)

    def _handover(self) -> Handover:
        return Handover(
            config=self.config,
            control_path=self._control_path,
            control=self._control,
            receiver=self._receiver,
            listeners=self._listeners,
            driver=self._driver,
            upstream=self._upstream,
            born=self._born,
            upgrades=self._upgrades,
            recoveries=self._recoveries,
            recovered_at=self._recovered_at,
            health=self._health.export(),
        )


def _no_delay(sock: socket.socket) -> None:
    """TCP_NODELAY on a TCP listener, which every accepted connection inherits (Linux).

    A server that takes its socket as a bare fd may not know it is TCP and so never
    set it: ``uvicorn --fd`` wraps the fd as AF_UNIX, asyncio then skips TCP_NODELAY,
    and each keep-alive response waits out Nagle's 40 ms for the client's delayed ACK.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
