"""The records of the generations' machine (gapless.run.generations): a generation's
state, the manager's phase, one generation as the machine sees it.

The pure record of a generation is :class:`Generation`; its process is
gapless.run.children.GenerationProcess.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import IllegalTransition  # one type for the package; re-exported here
from ..proc.spawn import ExitStatus

__all__ = [
    "CRASH_LIMIT",
    "CRASH_WINDOW",
    "LIVE",
    "GenState",
    "Generation",
    "IllegalTransition",
    "Phase",
]


class GenState(enum.Enum):
    STARTING = "starting"
    ACTIVE = "active"
    DRAINING = "draining"
    KILLED = "killed"  # SIGKILL sent to its group; waiting for the exit
    EXITED = "exited"


class Phase(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


LIVE = (GenState.STARTING, GenState.ACTIVE, GenState.DRAINING, GenState.KILLED)

#: Replacements for crashed active generations allowed within CRASH_WINDOW seconds
#: (systemd's StartLimitBurst and StartLimitIntervalSec defaults).
CRASH_LIMIT = 5
CRASH_WINDOW = 10.0


@dataclass
class Generation:
    """One generation as the machine sees it; times are ``time.monotonic()`` values."""

    number: int
    state: GenState
    started: float
    ready_deadline: float
    requests: tuple[int, ...] = ()  # reload requests this generation answers
    ready_at: float | None = None
    drain_deadline: float | None = None
    exit_status: ExitStatus | None = None  # the leader's, once it exited

    @property
    def ready_latency(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.started
