"""What goes in and out of the manager's state machine (:mod:`gapless.run.generations`).

Events are what happened (a signal, a datagram, an exit, a deadline); actions
are what the driver must do. All are frozen values, so tests compare them.

Example::

    >>> ChildExited(2, ExitStatus(3)).status.describe()
    'exited with code 3'
"""

from __future__ import annotations

from dataclasses import dataclass

from ..proc.spawn import ExitStatus

__all__ = [
    "Action",
    "Activated",
    "Boot",
    "ChildExited",
    "ChildReady",
    "DrainDeadline",
    "Event",
    "Exit",
    "GroupExited",
    "KillGroup",
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

# Events ----------------------------------------------------------------------


@dataclass(frozen=True)
class Boot:
    """The manager starts: spawn the first generation."""


@dataclass(frozen=True)
class ReloadRequested:
    """SIGHUP or a control command; ``request`` identifies a waiter to answer."""

    request: int | None = None


@dataclass(frozen=True)
class ChildReady:
    generation: int


@dataclass(frozen=True)
class SpawnFailed:
    """The command could not be executed at all (not found, not executable)."""

    generation: int
    reason: str


@dataclass(frozen=True)
class StartRejected:
    """The starting generation runs but will never serve on the handed sockets
    (it listens on a port of its own): it is killed and the start fails."""

    generation: int
    reason: str


@dataclass(frozen=True)
class ChildExited:
    """The generation's leader exited; ``lingering`` if its process group still has
    members (workers, grandchildren) alive."""

    generation: int
    status: ExitStatus
    lingering: bool = False


@dataclass(frozen=True)
class GroupExited:
    """The last member of a generation's process group is gone (after its leader)."""

    generation: int


@dataclass(frozen=True)
class ReadyTimeout:
    generation: int


@dataclass(frozen=True)
class DrainDeadline:
    generation: int


@dataclass(frozen=True)
class StopRequested:
    """SIGTERM, SIGINT or ``gapless stop``; a second one hurries (see StopNow)."""


@dataclass(frozen=True)
class StopNow:
    """Kill every generation's group at once, then exit."""


Event = (
    Boot
    | ReloadRequested
    | ChildReady
    | SpawnFailed
    | StartRejected
    | ChildExited
    | GroupExited
    | ReadyTimeout
    | DrainDeadline
    | StopRequested
    | StopNow
)

# Actions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    generation: int


@dataclass(frozen=True)
class Activated:
    """The generation serves now; ``latency`` is seconds from spawn to ready."""

    generation: int
    latency: float


@dataclass(frozen=True)
class Signal:
    """Tell the generation to drain: send ``signal`` to its leader."""

    generation: int
    signal: int
    deadline: float


@dataclass(frozen=True)
class KillGroup:
    """SIGKILL the generation's whole process group, for ``reason``."""

    generation: int
    reason: str


@dataclass(frozen=True)
class ReloadResult:
    generation: int | None
    ok: bool
    reason: str
    requests: tuple[int, ...]
    at: float


@dataclass(frozen=True)
class ReportReload:
    """A start ended, well or badly: answer its waiters, log it."""

    result: ReloadResult


@dataclass(frozen=True)
class Exit:
    code: int


Action = Spawn | Activated | Signal | KillGroup | ReportReload | Exit
