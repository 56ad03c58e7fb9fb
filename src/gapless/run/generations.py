"""The manager's generations, as a pure state machine (no IO, time passed in).

``gapless run`` keeps the listening sockets and runs the server program as
numbered generations 1, 2, ... The :class:`~gapless.run.manager.Manager` feeds this
machine OS events (signals, readiness, child exits, deadlines) and carries out
the actions it returns; tests drive every transition without a process or a
clock.

A generation's life::

    STARTING --ChildReady--> ACTIVE --(the next one is ready)--> DRAINING
    STARTING --ChildExited / SpawnFailed--> EXITED     (the reload failed)
    STARTING --ReadyTimeout--> KILLED --ChildExited--> EXITED
    DRAINING --DrainDeadline--> KILLED                  (SIGKILL to its group)
    DRAINING / KILLED --ChildExited--> EXITED, or stays until GroupExited when
        the leader left members of its process group behind

Rules kept here, each tested by name in tests/run/test_generations.py:

* at most one generation is starting; reload requests that arrive meanwhile
  coalesce into at most one queued follow-up, so a storm of requests starts at
  most two generations;
* a generation becomes active only on :class:`ChildReady`, never on a timer;
  the previous active one is told to drain only then;
* a failed start changes nothing for clients: the active generation stays;
* any number of generations drain at once, each with its own deadline, after
  which its whole process group is killed;
* a stop drains every generation and exits 0 once all have exited; a second
  stop kills them at once. A first generation that fails exits 1;
* an active generation that exits on its own is replaced at once (the sockets
  stay open, so clients wait in the backlog meanwhile); past
  :data:`CRASH_LIMIT` replacements within :data:`CRASH_WINDOW` seconds the
  manager gives up, drains the rest and exits 1, as systemd's start limit does.

Example::

    >>> m = Generations(ready_timeout=60, drain_timeout=30, stop_signal=15)
    >>> m.handle(Boot(), now=0.0)
    [Spawn(generation=1)]
    >>> m.handle(ChildReady(1), now=0.2)[0]
    Activated(generation=1, latency=0.2)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .events import (
    Action,
    Activated,
    Boot,
    ChildExited,
    ChildReady,
    DrainDeadline,
    Event,
    Exit,
    GroupExited,
    KillGroup,
    ReadyTimeout,
    ReloadRequested,
    ReloadResult,
    ReportReload,
    Signal,
    Spawn,
    SpawnFailed,
    StartRejected,
    StopNow,
    StopRequested,
)
from .records import CRASH_LIMIT, CRASH_WINDOW, LIVE, Generation, GenState, IllegalTransition, Phase
from .transitions import GENERATION_TABLE, MANAGER_TABLE

__all__ = [
    "CRASH_LIMIT",
    "CRASH_WINDOW",
    "LIVE",
    "Action",
    "Activated",
    "Boot",
    "ChildExited",
    "ChildReady",
    "DrainDeadline",
    "Event",
    "Exit",
    "GenState",
    "Generation",
    "Generations",
    "GroupExited",
    "IllegalTransition",
    "KillGroup",
    "Phase",
    "ReadyTimeout",
    "ReloadRequested",
    "ReloadResult",
    "ReportReload",
    "Signal",
    "Spawn",
    "SpawnFailed",
    "StartRejected",
    "StopNow",
    "StopRequested",
]


@dataclass
class Generations:
    """The state machine; ``handle(event, now)`` returns the actions to carry out.

    Args:
        ready_timeout: seconds a generation has to become ready before it is killed.
        drain_timeout: seconds a draining generation has before its group is killed.
        stop_signal: the signal number that tells a generation to drain.
    """

    ready_timeout: float
    drain_timeout: float
    stop_signal: int
    phase: Phase = Phase.RUNNING
    exit_code: int = 0
    generations: dict[int, Generation] = field(default_factory=dict)
    queued: tuple[int, ...] | None = None  # a follow-up reload and its requests
    last_reload: ReloadResult | None = None
    _next: int = 1
    _crashes: list[float] = field(default_factory=list)  # when active ones died

    # Queries ------------------------------------------------------------------

    def in_state(self, *states: GenState) -> list[Generation]:
        return [g for g in self.generations.values() if g.state in states]

    @property
    def starting(self) -> Generation | None:
        found = self.in_state(GenState.STARTING)
        return found[0] if found else None

    @property
    def active(self) -> Generation | None:
        found = self.in_state(GenState.ACTIVE)
        return found[0] if found else None

    @property
    def reloading(self) -> bool:
        """True while a start is under way or queued (systemd's RELOADING state)."""
        return self.starting is not None or self.queued is not None

    def timers(self) -> list[tuple[float, Event]]:
        """The deadlines still ahead, as ``(monotonic time, event to feed then)``."""
        result: list[tuple[float, Event]] = []
        for g in self.in_state(GenState.STARTING):
            result.append((g.ready_deadline, ReadyTimeout(g.number)))
        for g in self.in_state(GenState.DRAINING):
            if g.drain_deadline is not None:
                result.append((g.drain_deadline, DrainDeadline(g.number)))
        return sorted(result, key=lambda item: item[0])

    def restore(self, generations: list[Generation], last_reload: ReloadResult | None) -> None:
        """Take over the generations of the manager this one replaced in place."""
        self.generations = {gen.number: gen for gen in generations}
        self._next = max(self.generations, default=0) + 1
        self.last_reload = last_reload

    # Transitions --------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply ``event`` at monotonic time ``now``.

        Returns:
            The actions to carry out, in order.

        Raises:
            IllegalTransition: the event cannot happen now (a driver bug).
        """
        if self.phase is Phase.STOPPED:
            raise IllegalTransition("stopped", event)
        number = getattr(event, "generation", None)
        if number is None:
            handler = MANAGER_TABLE.get((self.phase, type(event)))
            if handler is None:
                raise IllegalTransition(f"the manager is {self.phase.value}", event)
            actions = handler(self, event, now)
        else:
            gen = self.generations.get(number)
            state = gen.state.value if gen else "unknown"
            gen_handler = None if gen is None else GENERATION_TABLE.get((gen.state, type(event)))
            if gen is None or gen_handler is None:
                raise IllegalTransition(f"generation {number} is {state}", event)
            actions = gen_handler(self, gen, event, now)
        return actions + self._settle(now)

    def _settle(self, now: float) -> list[Action]:
        """What follows from the new state: a queued start, a failed boot, the exit."""
        actions: list[Action] = []
        if self.phase is Phase.RUNNING and self.starting is None:
            if self.queued is not None:
                requests, self.queued = self.queued, None
                actions.append(self._spawn(now, requests))
            elif self.active is None:
                # Nothing serves and nothing starts: the first start failed, or a
                # replacement for a crashed generation did. Give up, draining the rest.
                actions += self._begin_stop(now, exit_code=1)
        if self.phase is Phase.STOPPING and not self.in_state(*LIVE):
            self.phase = Phase.STOPPED
            actions.append(Exit(self.exit_code))
        self._forget_old()
        return actions

    def _spawn(self, now: float, requests: tuple[int, ...]) -> Spawn:
        number = self._next
        self._next += 1
        self.generations[number] = Generation(
            number, GenState.STARTING, now, now + self.ready_timeout, requests
        )
        return Spawn(number)

    def _drain(self, gen: Generation, now: float) -> Signal:
        gen.state = GenState.DRAINING
        gen.drain_deadline = now + self.drain_timeout
        return Signal(gen.number, self.stop_signal, gen.drain_deadline)

    def _report(self, gen: Generation | None, ok: bool, reason: str, now: float) -> ReportReload:
        requests = gen.requests if gen is not None else ()
        number = gen.number if gen is not None else None
        self.last_reload = ReloadResult(number, ok, reason, requests, now)
        return ReportReload(self.last_reload)

    def _fail(self, gen: Generation, reason: str, now: float) -> ReportReload:
        return self._report(gen, False, f"generation {gen.number} {reason}", now)

    def _begin_stop(self, now: float, exit_code: int) -> list[Action]:
        self.phase = Phase.STOPPING
        self.exit_code = exit_code
        actions: list[Action] = []
        if self.queued is not None:
            result = ReloadResult(None, False, "the manager is stopping", self.queued, now)
            actions.append(ReportReload(result))
            self.queued = None
        for gen in self.in_state(GenState.STARTING):
            actions.append(self._fail(gen, "was cancelled: the manager is stopping", now))
        for gen in self.in_state(GenState.STARTING, GenState.ACTIVE):
            actions.append(self._drain(gen, now))
        return actions

    def _forget_old(self, keep: int = 8) -> None:
        exited = [n for n, g in self.generations.items() if g.state is GenState.EXITED]
        for number in exited[:-keep]:
            del self.generations[number]
