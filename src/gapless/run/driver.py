"""The generations of one command at work: the state machine fed with OS events.

Over 300 lines on purpose: it is the one place where the pure machine meets the
processes, and its event feeders, action handlers and the small interface its
neighbours ask (running, request_stop, active_process...) share that state.

:class:`Driver` owns the :class:`~gapless.run.generations.Generations` machine
and the generations' processes. It turns what happens to them (an exit, a
notify datagram, a readiness check, a deadline) into events, and carries out
the machine's actions: spawn, log readiness, signal, kill the group, report.
The :class:`~gapless.run.manager.Manager` around it owns the sockets, the signals
and the control socket, and runs the one ``select()`` loop, asking
:meth:`Driver.wake_at` for its timeout.

Example::

    driver = Driver(config, environ, selector, log, upstream, on_report)
    driver.start(listeners, receiver)         # spawns generation 1
    while driver.exit_code is None:
        ...select(timeout from driver.wake_at()), run callbacks...
        driver.tick(time.monotonic())
"""

from __future__ import annotations

import collections
import functools
import selectors
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import GaplessError, OwnPortError
from ..proc.spawn import ExitStatus
from ..proc.subreaper import group_members
from ..sockets.connections import ConnectionCounter
from ..sockets.listeners import listener_address
from ..systemd.notify_receiver import Notification, NotifyReceiver
from .children import Children, GenerationProcess
from .config import Listener, ManagerConfig
from .datagrams import Datagrams
from .eventlog import EventLog
from .faults import Faults
from .generations import (
    LIVE,
    Activated,
    Boot,
    ChildExited,
    ChildReady,
    Event,
    Exit,
    Generation,
    Generations,
    GenState,
    GroupExited,
    KillGroup,
    Phase,
    ReloadRequested,
    ReloadResult,
    ReportReload,
    Signal,
    Spawn,
    SpawnFailed,
    StartRejected,
    StopRequested,
)
from .hooks import SHELL, HookCommands, Hooks
from .processes import Processes, ProcessesFactory
from .readiness import Readiness
from .state import adopt_generations, export_generations, unadoptable
from .status import snapshot, summary
from .upstream import Upstream

__all__ = ["Driver", "Reporter"]

Reporter = Callable[[ReloadResult, list[str]], None]


class Driver:
    """Runs the generations; see the module docstring.

    Args:
        config: the manager's settings.
        environ: the children's environment (NOTIFY_SOCKET is set per child).
        selector: the manager's, where pidfds and stderr pipes are registered.
        log: the event log.
        upstream: what systemd is told.
        on_report: called with each start's result and the failed child's last
            stderr lines, to answer the clients waiting on it.
        faults: the test-only fault injection (gapless.run.faults).
        children: makes the generations' processes from the driver's exit callback;
            None: the real :class:`~gapless.run.children.Children` (a test may give
            a fake, see gapless.run.processes).
        hook_shell: what runs the hooks' commands (a test names a missing one).
    """

    def __init__(
        self,
        config: ManagerConfig,
        environ: Mapping[str, str],
        selector: selectors.BaseSelector,
        log: EventLog,
        upstream: Upstream,
        on_report: Reporter,
        faults: Faults | None = None,
        children: ProcessesFactory | None = None,
        hook_shell: str = SHELL,
    ) -> None:
        self.config = config
        self._environ = dict(environ)
        self._log = log
        self._upstream = upstream
        self._on_report = on_report
        self._machine = Generations(
            config.ready_timeout, config.drain_timeout, int(config.stop_signal)
        )
        commands = HookCommands(
            config.before_reload, config.on_ready, config.on_reload_failed, config.hook_timeout
        )
        self._hooks = Hooks(commands, self._environ, selector, log, hook_shell)
        self._hook_due = False  # a reload was asked for: its spawn waits for before-reload
        self._children: Processes
        if children is None:
            stop, grace = int(config.stop_signal), config.drain_timeout
            claim = self._hooks.claim
            self._children = Children(selector, log, self._on_exit, stop, grace, claim)
        else:
            self._children = children(self._on_exit)
        self.exit_code: int | None = None
        self._events: collections.deque[Event] = collections.deque()
        self._feeding = False
        self._listeners: Sequence[Listener] = ()
        self._notify_address = ""
        self._readiness: Readiness | None = None  # once start() knows the sockets
        self._connections = ConnectionCounter(frozenset(), frozenset())
        self.datagrams = Datagrams(log, Faults({}) if faults is None else faults, self._route)
        self._cold_next = False  # the next generation starts cold: gapless reload --cold

    # What the manager and its neighbours ask -----------------------------------

    @property
    def running(self) -> bool:
        """No stop was asked for yet."""
        return self._machine.phase is Phase.RUNNING

    @property
    def serving(self) -> bool:
        """A generation is active and no stop was asked for."""
        return self._machine.active is not None and self.running

    @property
    def reload_under_way(self) -> bool:
        """A generation is starting (a new reload request joins it, or follows it)."""
        return self._machine.starting is not None

    def active_process(self) -> GenerationProcess | None:
        active = self._machine.active
        return None if active is None else self._children.process(active.number)

    def request_reload(self, request: int | None, cold: bool = False) -> None:
        """Start a generation; ``request`` (if any) is in the result reported for it.
        With ``cold``, it starts cold and the fork server is replaced (gapless.run.warm)."""
        if cold and self.config.warm:
            self._cold_next = True
            self._children.retire_forkserver("a cold start was asked for")
        self._hook_due = self.running
        self.feed(ReloadRequested(request))

    def request_stop(self, why: str, **fields: Any) -> None:
        """Log ``why`` and stop (while stopping already: hurry the stop)."""
        self._log.event("stop", why, **fields)
        self._children.retire_forkserver("the manager stops")
        self.feed(StopRequested())

    def status(self, listeners: Sequence[Listener], about: Mapping[str, Any]) -> dict[str, Any]:
        """The ``gapless status`` answer (gapless.run.status)."""
        return snapshot(self._machine, self._children, listeners, about)

    # Upgrading in place (gapless.run.reexec, gapless.run.state) ------------------

    def upgrade_refusal(self) -> str | None:
        """Why the manager cannot exec itself now, or None: only a quiet manager does."""
        machine = self._machine
        if machine.phase is not Phase.RUNNING:
            return "the manager is stopping"
        if machine.reloading:
            return "a reload is under way"
        hook = self._hooks.busy()
        if hook is not None:
            return hook
        for gen in machine.in_state(GenState.KILLED, GenState.DRAINING):
            if gen.state is GenState.KILLED or gen.exit_status is not None:
                return f"generation {gen.number} is being killed"
        return None

    def export_generations(self) -> tuple[dict[str, Any], list[int]]:
        return export_generations(self._machine, self._children)

    def kill_unadoptable(self) -> None:
        """Before an exec to recover: kill the groups no pidfd can name any more,
        and the hooks, whose pidfds do not survive the exec."""
        self._hooks.close()
        for proc in unadoptable(self._machine, self._children):
            proc.child.kill_group(signal.SIGKILL)
            self._log.event(
                "killed",
                f"generation {proc.number} killed (SIGKILL to group {proc.pid}): "
                "its leader exited and its group cannot be handed over",
                generation=proc.number,
            )

    def adopt(self, state: Mapping[str, Any]) -> None:
        """In the new process: carry on with the generations ``state`` hands over."""
        adopt_generations(state, self._children, self._machine, self._upstream)
        machine = self._machine
        if machine.phase is Phase.STOPPING and not machine.in_state(*LIVE):
            self.exit_code = machine.exit_code  # the stop was all but over
        if self.config.warm and self.serving:  # the replaced manager's fork server saw EOF
            self._start_forkserver()

    def close(self) -> None:
        """Kill what still runs (after an error in the manager) and close everything."""
        self._hooks.close()
        self._children.close()

    def start(self, listeners: Sequence[Listener], receiver: NotifyReceiver, boot: bool) -> None:
        """Take the sockets; with ``boot``, spawn generation 1 (else one was adopted).

        Raises:
            ConfigError: ``--ready accept`` with no socket to watch.
        """
        self._listeners = listeners
        self._notify_address = receiver.address
        inodes = [item.inode for item in listeners]
        self._connections = ConnectionCounter.of(item.sock for item in listeners)
        handed = ", ".join(
            f"fd {fd} {item.name + '=' if item.name else ''}{listener_address(item.sock)}"
            for fd, item in enumerate(listeners, start=3)
        )
        self._readiness = Readiness(self.config.ready, inodes, self._connections, handed)
        if boot:
            self.feed(Boot())

    def feed(self, event: Event) -> None:
        """Hand an event to the machine and carry out its actions, which may feed more."""
        self._events.append(event)
        if self._feeding:
            return
        self._feeding = True
        try:
            while self._events and self._machine.phase is not Phase.STOPPED:
                actions = self._machine.handle(self._events.popleft(), time.monotonic())
                if self._machine.phase is not Phase.RUNNING:
                    self._upstream.stopping()
                for action in actions:
                    _ACTIONS[type(action)](self, action)
            self._upstream.update(
                serving=self._machine.active is not None and self._machine.phase is Phase.RUNNING,
                reloading=self._machine.reloading,
                status=summary(self._machine, self._children),
            )
        finally:
            self._events.clear()
            self._feeding = False

    # Time ---------------------------------------------------------------------

    def wake_at(self) -> float | None:
        """The next deadline or readiness check (monotonic); None: wait for events."""
        wake_at = [when for when, _ in self._machine.timers()]
        hook = self._hooks.wake_at()
        if hook is not None:
            wake_at.append(hook)
        dropped = self.datagrams.wake_at()
        if dropped is not None:
            wake_at.append(dropped)
        starting = self._starting()
        if starting is not None and self._readiness is not None:
            check_at = self._readiness.wake_at(starting[0].started)
            if check_at is not None:
                wake_at.append(check_at)
        return min(wake_at, default=None)

    def tick(self, now: float) -> None:
        """Feed the deadlines that passed, then look at the starting generation."""
        self._hooks.tick(now)  # first: a generation's ready deadline waits for its hook
        self.datagrams.tick(now)
        while self.exit_code is None:
            due = [event for when, event in self._machine.timers() if when <= now]
            if not due:
                break
            self.feed(due[0])
        starting = self._starting()
        if starting is not None and self._readiness is not None:
            gen, proc = starting
            try:
                via = self._readiness.check(proc.pid, gen.started, now)
            except OwnPortError as exc:
                self.feed(StartRejected(gen.number, str(exc)))
                return
            if via is not None:
                proc.ready_via = via
                self.feed(ChildReady(gen.number))

    def _process(self, number: int) -> GenerationProcess:
        proc = self._children.process(number)
        assert proc is not None, f"generation {number} has no process"
        return proc

    def _starting(self) -> tuple[Generation, GenerationProcess] | None:
        """The starting generation, if its process runs."""
        gen = self._machine.starting
        proc = None if gen is None else self._children.process(gen.number)
        return None if gen is None or proc is None or proc.status is not None else (gen, proc)

    # OS events ----------------------------------------------------------------

    def on_sigchld(self) -> None:
        """Reap, then see whether a generation's left-behind group is gone now."""
        self._hooks.collect()  # first: their exit statuses are theirs
        self._children.reap()
        for gen in self._machine.in_state(GenState.DRAINING, GenState.KILLED):
            proc = self._children.process(gen.number)
            if gen.exit_status is not None and proc and not self._children.lingering(proc):
                self.feed(GroupExited(gen.number))
        self._release_exited()

    def forward(self, received: signal.Signals) -> None:
        """Pass a signal on to the active generation's leader."""
        proc = self.active_process()
        if proc is not None:
            proc.child.send_signal(received)
            self._log.event(
                "forwarded",
                f"forwarded {received.name} to generation {proc.number} (pid {proc.pid})",
                generation=proc.number,
            )

    def _on_exit(self, proc: GenerationProcess) -> None:
        assert proc.status is not None
        lingering = self._children.lingering(proc)
        left = ", leaving processes in its group" if lingering else ""
        gen = self._machine.generations.get(proc.number)
        state = None if gen is None else gen.state
        told = state in (GenState.DRAINING, GenState.KILLED)  # we asked it to end
        how = proc.status.describe()
        if state is GenState.DRAINING and proc.status.returncode == -self.config.stop_signal:
            # Its default handler for the stop signal we sent: the end we asked for.
            how = f"exited on {self.config.stop_signal.name} after its drain"
        self._log.event(
            "exited",
            f"generation {proc.number} (pid {proc.pid}) {how}{left}",
            level="info" if told or proc.status.returncode == 0 else "warning",
            generation=proc.number,
            pid=proc.pid,
            returncode=proc.status.returncode,
        )
        if proc.number in self._machine.generations:
            self.feed(ChildExited(proc.number, proc.status, lingering))
        self._release_exited()

    def _release_exited(self) -> None:
        for proc in self._children.live():
            gen = self._machine.generations.get(proc.number)
            if gen is None or gen.state is GenState.EXITED:
                self._children.release(proc.number)

    def on_notify(self, receiver: NotifyReceiver) -> None:
        """Route the pending datagrams (see gapless.run.datagrams)."""
        self.datagrams.read(receiver)

    def _route(self, note: Notification) -> str | None:
        """READY=1 of the starting generation, STATUS= of any; None if wanted, else
        why the datagram is dropped."""
        starting = self._machine.starting
        proc = self._children.sender(note.pid, starting.number if starting else None)
        if proc is None:
            return f" from pid {note.pid}: not a process of any generation"
        if note.status is not None:
            proc.status_line = note.status
        wanted = self.config.ready.notify and starting is not None
        if wanted and note.ready and starting and proc.number == starting.number:
            if self._readiness is None or self._readiness.notified(time.monotonic()):
                proc.ready_via = "notify"
                self.feed(ChildReady(proc.number))
            else:
                self._log.event(
                    "notified",
                    f"generation {proc.number} sent READY=1; ready once it accepts "
                    "on the sockets it was given",
                    generation=proc.number,
                )
        return None

    # Actions ------------------------------------------------------------------

    def _spawn(self, action: Spawn) -> None:
        number = action.generation
        asked, self._hook_due = self._hook_due and number > 1, False
        if asked and self._hooks.gates_reloads:
            active = self.active_process()
            done = functools.partial(self._hook_done, number)
            deadline = self._hooks.before_reload(number, active.pid if active else None, done)
            # Its ready deadline counts from its spawn, once the hook is done.
            self._machine.generations[number].ready_deadline = deadline + self.config.ready_timeout
            return
        self._start_generation(number)

    def _hook_done(self, number: int, problem: str | None) -> None:
        """The before-reload hook of ``number`` ended: fail the reload, or spawn."""
        gen = self._machine.generations.get(number)
        if gen is None or gen.state is not GenState.STARTING:
            return  # cancelled meanwhile
        if problem is not None:
            self.feed(SpawnFailed(number, f"generation {number} not started: {problem}"))
            return
        gen.started = time.monotonic()
        gen.ready_deadline = gen.started + self.config.ready_timeout
        self._start_generation(number)

    def _start_generation(self, number: int) -> None:
        env = {**self._environ, "NOTIFY_SOCKET": self._notify_address}
        listeners = [(listener.name, listener.sock) for listener in self._listeners]
        try:
            # A manager killed outright (SIGKILL, OOM) must leave no generation serving
            # for ever on sockets a restarted manager cannot bind: the leader drains.
            death = int(self.config.stop_signal)
            warm, self._cold_next = self.config.warm and not self._cold_next, False
            command = self.config.command
            proc = self._children.spawn(number, command, listeners, env, death, warm)
        except GaplessError as exc:
            self.feed(SpawnFailed(number, f"generation {number} could not start: {exc}"))
            return
        if self._readiness is not None:
            self._readiness.started(time.monotonic())
        self._log.event(
            "started",
            f"generation {number} started as pid {proc.pid}"
            + (" (forked warm)" if proc.start == "warm" else ""),
            generation=number,
            pid=proc.pid,
            start=proc.start,
        )

    def _activated(self, action: Activated) -> None:
        proc = self._process(action.generation)
        self._log.event(
            "ready",
            f"generation {action.generation} ready after {action.latency * 1000:.0f} ms "
            f"({proc.ready_via})",
            generation=action.generation,
            latency_ms=round(action.latency * 1000, 1),
            via=proc.ready_via,
        )
        self._hooks.fire("on-ready", action.generation, proc.pid)
        if self.config.warm:
            # Now, not beside the start: its imports would compete with the new generation's.
            self._start_forkserver()

    def _start_forkserver(self) -> None:
        env = {**self._environ, "NOTIFY_SOCKET": self._notify_address}
        self._children.start_forkserver(self.config.command, env)

    def _signal(self, action: Signal) -> None:
        if self._hooks.cancel(action.generation):
            # Stopped while its before-reload hook ran: it never had a process.
            self.feed(ChildExited(action.generation, ExitStatus(-signal.SIGKILL)))
            return
        proc = self._process(action.generation)
        held = self._connections.count(group_members(proc.pid))
        proc.child.send_signal(action.signal)
        name = signal.Signals(action.signal).name
        seconds = action.deadline - time.monotonic()
        self._log.event(
            "draining",
            f"generation {action.generation} draining: sent {name} to pid {proc.pid}, "
            f"{held} connection{'' if held == 1 else 's'} left, "
            f"killed in {seconds:.3g} s if still running",
            generation=action.generation,
            connections=held,
        )

    def _kill(self, action: KillGroup) -> None:
        proc = self._process(action.generation)
        held = self._connections.count(group_members(proc.pid))  # cut by the kill (metrics)
        proc.child.kill_group(signal.SIGKILL)
        self._log.event(
            "killed",
            f"generation {action.generation} killed (SIGKILL to group {proc.pid}): {action.reason}",
            generation=action.generation,
            connections=held,
        )

    def _report(self, action: ReportReload) -> None:
        result = action.result
        proc = self._children.process(result.generation or 0)
        stderr = proc.last_stderr_lines() if proc is not None and not result.ok else []
        if not result.ok:
            last = f"; its last stderr line: {stderr[-1]!r}" if stderr else ""
            what = "start" if result.generation == 1 else "reload"
            message = f"{what} failed: {result.reason}{last}"
            self._log.event("failed", message, stderr=stderr, generation=result.generation)
            if self.running and result.generation is not None:  # not a stop's cancellation
                pid = None if proc is None else proc.pid
                self._hooks.fire("on-reload-failed", result.generation, pid, result.reason)
        self._on_report(result, stderr)

    def _exit(self, action: Exit) -> None:
        self.exit_code = action.code


_ACTIONS: dict[type, Callable[[Driver, Any], None]] = {
    Spawn: Driver._spawn,
    Activated: Driver._activated,
    Signal: Driver._signal,
    KillGroup: Driver._kill,
    ReportReload: Driver._report,
    Exit: Driver._exit,
}
