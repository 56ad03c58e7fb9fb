"""The life of a self-upgrading process, as a pure state machine (no IO).

Events go in, actions come out; the :class:`~gapless.library.upgrader.Upgrader` feeds
OS events (signals, readiness datagrams, child exits, deadlines) and carries out
the actions. Time is passed in, so tests drive every transition without a clock.

States::

    STARTING --Ready--> SERVING --UpgradeRequested--> UPGRADING
    UPGRADING --SuccessorReady--> DRAINING       (the successor serves now)
    UPGRADING --SuccessorFailed--> SERVING       (nothing changed for clients)
    SERVING / STARTING --StopRequested--> STOPPING   (final: no successor)
    DRAINING --StopRequested--> STOPPING        (a stop while draining hurries next time)
    STOPPING --StopRequested--> STOPPED          (a second TERM or INT: exit at once)
    DRAINING / STOPPING --Drained | DeadlinePassed--> STOPPED
    UPGRADING --Drained--> STOPPED               (close() mid-upgrade: the successor is killed)

``Drained`` is also what :meth:`~gapless.library.upgrader.Upgrader.close` feeds, so every
state takes it; ``Ready`` too is taken everywhere (a late ``ready()`` changes nothing).

Rules kept here (and tested by name in tests/library/test_protocol.py):

* at most one successor is starting; a request while one starts joins it;
* the process stops accepting only after its successor reported ready;
* a failed successor leaves the process serving;
* every drain has a deadline (``drain_timeout`` seconds, or none when negative).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..errors import IllegalTransition  # one type for the package; re-exported here

__all__ = [
    "Action",
    "AnnounceReady",
    "BeginDrain",
    "DeadlinePassed",
    "Drained",
    "Event",
    "Exit",
    "HandOver",
    "IllegalTransition",
    "KillSuccessor",
    "Lifecycle",
    "Ready",
    "RefuseUpgrade",
    "ReportFailure",
    "SpawnSuccessor",
    "State",
    "StopRequested",
    "SuccessorFailed",
    "SuccessorReady",
    "UpgradeRequested",
]


class State(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    UPGRADING = "upgrading"
    DRAINING = "draining"
    STOPPING = "stopping"
    STOPPED = "stopped"


# Events ---------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """This process serves its sockets."""


@dataclass(frozen=True)
class UpgradeRequested:
    """HUP, USR2 or a call to ``upgrade()``."""


@dataclass(frozen=True)
class SuccessorReady:
    pid: int


@dataclass(frozen=True)
class SuccessorFailed:
    reason: str


@dataclass(frozen=True)
class StopRequested:
    """TERM, INT or a call to ``stop()``."""


@dataclass(frozen=True)
class Drained:
    """The server loop finished what it held."""


@dataclass(frozen=True)
class DeadlinePassed:
    """The drain deadline passed with work left."""


Event = (
    Ready
    | UpgradeRequested
    | SuccessorReady
    | SuccessorFailed
    | StopRequested
    | Drained
    | DeadlinePassed
)

# Actions --------------------------------------------------------------------


@dataclass(frozen=True)
class AnnounceReady:
    """Tell the parent (or systemd) that this process serves; write the PID file."""


@dataclass(frozen=True)
class SpawnSuccessor:
    pass


@dataclass(frozen=True)
class KillSuccessor:
    pass


@dataclass(frozen=True)
class HandOver:
    """The successor serves: tell systemd its PID."""

    pid: int


@dataclass(frozen=True)
class BeginDrain:
    """Stop accepting and finish what is held, by ``deadline`` (monotonic, or None).

    ``final`` is True when no successor exists: only then may unix socket paths
    be unlinked and STOPPING=1 be sent upstream.
    """

    deadline: float | None
    final: bool


@dataclass(frozen=True)
class ReportFailure:
    reason: str


@dataclass(frozen=True)
class RefuseUpgrade:
    reason: str


@dataclass(frozen=True)
class Exit:
    """Leave now; ``hurried`` when work may be cut (second signal, deadline)."""

    hurried: bool
    final: bool


Action = (
    AnnounceReady
    | SpawnSuccessor
    | KillSuccessor
    | HandOver
    | BeginDrain
    | ReportFailure
    | RefuseUpgrade
    | Exit
)


@dataclass
class Lifecycle:
    """The state machine. ``handle(event, now)`` returns the actions to carry out."""

    drain_timeout: float = 30.0
    state: State = State.STARTING
    successor: int | None = None
    _log: list[tuple[State, str, State]] = field(default_factory=list, repr=False)

    def handle(self, event: Event, now: float) -> list[Action]:
        handler = _TABLE.get((self.state, type(event)))
        if handler is None:
            raise IllegalTransition(self.state, event)
        before = self.state
        new_state, actions = handler(self, event, now)
        self.state = new_state
        self._log.append((before, type(event).__name__, new_state))
        return actions

    def _deadline(self, now: float) -> float | None:
        return None if self.drain_timeout < 0 else now + self.drain_timeout


_Result = tuple[State, list[Action]]


def _ready(m: Lifecycle, e: Event, now: float) -> _Result:
    return State.SERVING, [AnnounceReady()]


def _again(m: Lifecycle, e: Event, now: float) -> _Result:
    return m.state, []


def _spawn(m: Lifecycle, e: Event, now: float) -> _Result:
    return State.UPGRADING, [SpawnSuccessor()]


def _successor_ready(m: Lifecycle, e: Event, now: float) -> _Result:
    assert isinstance(e, SuccessorReady)
    m.successor = e.pid
    # Stop accepting first, then tell systemd: once it hears of the new main
    # PID, only that process accepts.
    return State.DRAINING, [BeginDrain(m._deadline(now), final=False), HandOver(e.pid)]


def _successor_failed(m: Lifecycle, e: Event, now: float) -> _Result:
    assert isinstance(e, SuccessorFailed)
    return State.SERVING, [ReportFailure(e.reason)]


def _stop(m: Lifecycle, e: Event, now: float) -> _Result:
    kill: list[Action] = [KillSuccessor()] if m.state is State.UPGRADING else []
    return State.STOPPING, [*kill, BeginDrain(m._deadline(now), final=True)]


def _stop_while_draining(m: Lifecycle, e: Event, now: float) -> _Result:
    return State.STOPPING, []


def _exit_now(m: Lifecycle, e: Event, now: float) -> _Result:
    return State.STOPPED, [Exit(hurried=True, final=m.successor is None)]


def _drained(m: Lifecycle, e: Event, now: float) -> _Result:
    return State.STOPPED, [Exit(hurried=False, final=m.successor is None)]


def _closed_while_upgrading(m: Lifecycle, e: Event, now: float) -> _Result:
    # No successor took over: this process is the last one, and the starting
    # one must not go on to serve alone.
    return State.STOPPED, [KillSuccessor(), Exit(hurried=False, final=True)]


def _refuse(m: Lifecycle, e: Event, now: float) -> _Result:
    return m.state, [RefuseUpgrade(f"cannot upgrade: this process is {m.state.value}")]


S = State
_TABLE = {
    (S.STARTING, Ready): _ready,
    (S.STARTING, StopRequested): _stop,
    (S.STARTING, UpgradeRequested): _refuse,
    (S.STARTING, Drained): _drained,
    (S.SERVING, Ready): _again,
    (S.SERVING, UpgradeRequested): _spawn,
    (S.SERVING, StopRequested): _stop,
    (S.SERVING, Drained): _drained,
    (S.UPGRADING, Ready): _again,
    (S.UPGRADING, UpgradeRequested): _again,
    (S.UPGRADING, SuccessorReady): _successor_ready,
    (S.UPGRADING, SuccessorFailed): _successor_failed,
    (S.UPGRADING, StopRequested): _stop,
    (S.UPGRADING, Drained): _closed_while_upgrading,
    (S.DRAINING, Ready): _again,
    (S.DRAINING, UpgradeRequested): _refuse,
    (S.DRAINING, StopRequested): _stop_while_draining,
    (S.DRAINING, Drained): _drained,
    (S.DRAINING, DeadlinePassed): _exit_now,
    (S.STOPPING, Ready): _again,
    (S.STOPPING, UpgradeRequested): _refuse,
    (S.STOPPING, StopRequested): _exit_now,
    (S.STOPPING, Drained): _drained,
    (S.STOPPING, DeadlinePassed): _exit_now,
    (S.STOPPING, SuccessorFailed): _again,
    (S.STOPPING, SuccessorReady): _again,
    (S.STOPPED, Ready): _again,
    (S.STOPPED, Drained): _again,
    (S.STOPPED, StopRequested): _again,
    (S.STOPPED, DeadlinePassed): _again,
    (S.STOPPED, UpgradeRequested): _refuse,
    (S.STOPPED, SuccessorFailed): _again,
    (S.STOPPED, SuccessorReady): _again,
}
