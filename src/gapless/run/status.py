"""What the manager reports about itself: ``gapless status`` and systemd's STATUS=.

Example::

    report = snapshot(machine, children, listeners, about={"pid": os.getpid()})
    report["generations"][0]   # {"generation": 2, "state": "active", "pid": ...}
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..proc.subreaper import group_members
from ..sockets.connections import ConnectionCounter
from ..sockets.listeners import listener_address
from .config import Listener
from .generations import LIVE, Generation, Generations, GenState, Phase, ReloadResult
from .processes import Processes

__all__ = ["snapshot", "summary"]


def snapshot(
    machine: Generations,
    children: Processes,
    listeners: Sequence[Listener],
    about: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``gapless status`` answer, as JSON-ready values; times in seconds.

    Args:
        machine: the generations' states.
        children: their processes.
        listeners: the sockets the manager holds.
        about: facts about the manager itself (pid, command...), reported as is.

    Returns:
        ``manager``, ``generations`` (live ones, oldest first), ``listeners`` and
        ``last_reload`` (None before the first start ended).
    """
    now = time.monotonic()
    last = machine.last_reload
    counter = ConnectionCounter.of(item.sock for item in listeners)
    live = machine.in_state(*LIVE)
    return {
        "manager": {**about, "state": machine.phase.value},
        "generations": [_describe(gen, children, counter, now) for gen in live],
        "listeners": [
            {"name": item.name, "address": str(listener_address(item.sock))} for item in listeners
        ],
        "last_reload": None if last is None else _describe_result(last, now),
    }


def summary(machine: Generations, children: Processes) -> str:
    """One line for systemd's STATUS=, e.g. ``generation 2 active (pid 41); 1 draining``."""
    if machine.phase is not Phase.RUNNING:
        return f"stopping: {len(machine.in_state(*LIVE))} generation(s) left"
    parts = []
    for gen in machine.in_state(GenState.STARTING, GenState.ACTIVE):
        proc = children.process(gen.number)
        pid = f" (pid {proc.pid})" if proc else ""
        parts.append(f"generation {gen.number} {gen.state.value}{pid}")
    draining = len(machine.in_state(GenState.DRAINING, GenState.KILLED))
    if draining:
        parts.append(f"{draining} draining")
    return "; ".join(parts)


def _describe(
    gen: Generation, children: Processes, counter: ConnectionCounter, now: float
) -> dict[str, Any]:
    proc = children.process(gen.number)
    deadline = gen.drain_deadline if gen.state is GenState.DRAINING else None
    pids = group_members(proc.pid) if proc else []
    draining = gen.state in (GenState.DRAINING, GenState.KILLED)
    return {
        "generation": gen.number,
        "pid": proc.pid if proc else None,
        "pids": pids,
        # Only where it tells how far a drain is: a scan of /proc per generation.
        "connections": counter.count(pids) if draining else None,
        "state": gen.state.value,
        "age": round(now - gen.started, 3),
        "ready_latency": _rounded(gen.ready_latency),
        "drain_deadline": None if deadline is None else _rounded(deadline - now),
        "status": proc.status_line if proc else None,
        "start": proc.start if proc else None,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _describe_result(result: ReloadResult, now: float) -> dict[str, Any]:
    return {
        "generation": result.generation,
        "ok": result.ok,
        "reason": result.reason,
        "ago": round(now - result.at, 3),
    }
