"""The state a manager hands over to the one it execs in place, as JSON.

Encoded here, read back by a gapless of another version (gapless.run.reexec):
every field name and value format is part of the wire between versions; a new
field must be optional on reading.

Example::

    generations, fds = export_generations(machine, children)
    ...in the new process: adopt_generations(state, children, machine, upstream)
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from typing import Any

from ..sockets.addresses import parse_bind
from ..sockets.listeners import UnixPathStamp, adopt_listener
from .children import GenerationProcess
from .config import Listener, ManagerConfig
from .generations import LIVE, Generation, Generations, GenState, Phase, ReloadResult
from .processes import Processes
from .readiness import ReadyMode
from .upstream import Upstream

__all__ = [
    "adopt_generations",
    "config_from_json",
    "config_to_json",
    "export_generations",
    "listeners_from_json",
    "listeners_to_json",
    "stamp_from_json",
    "stamp_to_json",
    "unadoptable",
]


_PIPES = ("stderr_fd", "stdout_fd")  # a generation's output pipes, kept across the exec


def stamp_to_json(stamp: UnixPathStamp | None) -> list[Any] | None:
    if stamp is None:
        return None
    return [stamp.path, stamp.device, stamp.inode, stamp.changed_ns]


def stamp_from_json(value: list[Any] | None) -> UnixPathStamp | None:
    return None if value is None else UnixPathStamp(*value)


def export_generations(
    machine: Generations, children: Processes
) -> tuple[dict[str, Any], list[int]]:
    """The generations' part of the state, and the fds the new process must keep
    (the watchdog's pipe, each generation's stderr and stdout pipes).

    Every generation whose leader still runs is carried; one whose leader was
    reaped (its group lingering) cannot be watched by the new process: see
    :func:`unadoptable`.
    """
    live = []
    for gen in machine.in_state(*LIVE):
        proc = children.process(gen.number)
        if proc is not None and proc.status is None:
            live.append((gen, proc))
    generations = generations_to_json(live)
    last = machine.last_reload
    watchdog = children.watchdog
    state = {
        "generations": generations,
        "last_reload": None if last is None else {**last.__dict__, "requests": ()},
        "stopping": None if machine.phase is Phase.RUNNING else machine.exit_code,
        "queued": machine.queued is not None,
        "watchdog": None if watchdog is None else {"pid": watchdog.pid, "fd": watchdog.fileno()},
    }
    fds = [] if watchdog is None else [watchdog.fileno()]  # its pipe open across the exec
    fds += [g[key] for g in generations for key in _PIPES if g[key] is not None]
    return state, fds


def unadoptable(machine: Generations, children: Processes) -> list[GenerationProcess]:
    """The generations still live whose leader was reaped already: their group
    lingers, and only a pidfd of the leader could be handed over."""
    procs = [children.process(gen.number) for gen in machine.in_state(*LIVE)]
    return [proc for proc in procs if proc is not None and proc.status is not None]


def adopt_generations(
    state: Mapping[str, Any], children: Processes, machine: Generations, upstream: Upstream
) -> None:
    """In the new process: watch the generations handed over and restore their states
    (and, after a recovery, a stop or a follow-up reload under way)."""
    handed_over = generations_from_json(state["generations"])
    children.adopt_watchdog(state.get("watchdog"))
    for (gen, pid, stderr_fd, stdout_fd), item in zip(
        handed_over, state["generations"], strict=True
    ):
        proc = children.adopt(gen.number, pid, stderr_fd, stdout_fd)
        proc.start = item.get("start")  # None from a gapless that did not say
    last = state["last_reload"]
    last_reload = None if last is None else ReloadResult(**{**last, "requests": ()})
    machine.restore([gen for gen, *_ in handed_over], last_reload)
    if state.get("queued"):
        machine.queued = ()
    if state.get("stopping") is not None:
        machine.phase = Phase.STOPPING
        machine.exit_code = int(state["stopping"])
    upstream.restore(state["upstream"])


def config_to_json(config: ManagerConfig) -> dict[str, Any]:
    return {
        "command": list(config.command),
        "control_path": config.control_path,
        "pid_file": config.pid_file,
        "ready": config.ready.text,
        "ready_timeout": config.ready_timeout,
        "drain_timeout": config.drain_timeout,
        "stop_signal": int(config.stop_signal),
        "log_format": config.log_format,
        "shutdown_delay": config.shutdown_delay,
        "warm": config.warm,
        # Its socket travels open (Health.export): the bind only names it then.
        "health_bind": None if config.health_bind is None else str(config.health_bind),
        "before_reload": config.before_reload,
        "on_ready": config.on_ready,
        "on_reload_failed": config.on_reload_failed,
        "hook_timeout": config.hook_timeout,
    }


def config_from_json(value: Mapping[str, Any], control_path: str) -> ManagerConfig:
    """The settings of the replaced manager; its binds are open sockets by now."""
    return ManagerConfig(
        command=value["command"],
        control_path=control_path,
        pid_file=value["pid_file"],
        ready=ReadyMode.parse(value["ready"]),
        ready_timeout=value["ready_timeout"],
        drain_timeout=value["drain_timeout"],
        stop_signal=signal.Signals(value["stop_signal"]),
        log_format=value["log_format"],
        shutdown_delay=value.get("shutdown_delay", 0.0),
        warm=value.get("warm", False),
        health_bind=None if value.get("health_bind") is None else parse_bind(value["health_bind"]),
        before_reload=value.get("before_reload"),
        on_ready=value.get("on_ready"),
        on_reload_failed=value.get("on_reload_failed"),
        hook_timeout=value.get("hook_timeout", 30.0),
    )


def listeners_to_json(listeners: Sequence[Listener]) -> list[dict[str, Any]]:
    return [
        {"fd": item.sock.fileno(), "name": item.name, "stamp": stamp_to_json(item.stamp)}
        for item in listeners
    ]


def listeners_from_json(value: Sequence[Mapping[str, Any]]) -> list[Listener]:
    return [
        Listener(item["name"], adopt_listener(item["fd"]), stamp_from_json(item["stamp"]))
        for item in value
    ]


def generations_to_json(
    generations: Sequence[tuple[Generation, GenerationProcess]],
) -> list[dict[str, Any]]:
    """The live generations (leaders not yet reaped) with their pid and output pipes."""
    result = []
    for gen, proc in generations:
        result.append(
            {
                "number": gen.number,
                "state": gen.state.value,
                "started": gen.started,
                "ready_deadline": gen.ready_deadline,
                "ready_at": gen.ready_at,
                "drain_deadline": gen.drain_deadline,
                "pid": proc.pid,
                "stderr_fd": proc.child.stderr_fd,
                "stdout_fd": proc.child.stdout_fd,
                "start": proc.start,
            }
        )
    return result


def generations_from_json(
    value: Sequence[Mapping[str, Any]],
) -> list[tuple[Generation, int, int | None, int | None]]:
    """``(generation, leader pid, stderr fd, stdout fd)`` for each generation handed
    over; a gapless before 0.x relayed no stdout, so its state has no stdout fd."""
    return [
        (
            Generation(
                number=item["number"],
                state=GenState(item["state"]),
                started=item["started"],
                ready_deadline=item["ready_deadline"],
                ready_at=item["ready_at"],
                drain_deadline=item["drain_deadline"],
            ),
            item["pid"],
            item["stderr_fd"],
            item.get("stdout_fd"),
        )
        for item in value
    ]
