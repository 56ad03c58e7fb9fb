"""Upgrading the manager itself in place: exec a new gapless, keeping the PID,
the sockets and the children.

A new gapless version (or a new virtualenv) replaces the running manager with
``execve``: the process, its PID (what systemd or a container runtime watches)
and its children stay; only the code changes. Before the exec the manager
writes its state (the generations, their pids and deadlines, which fd is which
socket) as JSON to a memfd, clears close-on-exec on the fds that must survive
(listeners, control socket, notify socket, each child's stderr pipe, the
watchdog's pipe) and blocks the signals it handles, so none hits a default
action while no handler exists;
the new process (``python -m gapless.reexec FD``) adopts everything, installs
its handlers and unblocks them, and the pending signals (a SIGCHLD, a HUP) are
delivered then.

The target interpreter is tried first (``python -m gapless.reexec --check``
must print the state version this one writes, see gapless.run.upgrade_check),
because an exec that fails to start would leave the children orphaned and the
sockets closed.

The same exec, with the same interpreter, is how the manager recovers from a bug
in its own loop (invariant 7): then the state may be anything, a generation
starting, being killed, or the manager stopping, and all of it is carried over;
only the clients waiting for an answer lose their connection. Signals caught but
not yet handled are raised again while blocked, so they wait across the exec.

Example::

    gapless upgrade                       # same interpreter path, new code on disk
    gapless upgrade --python /srv/venv2/bin/python
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UpgradeError
from ..sockets.listeners import UnixPathStamp, adopt_listener
from ..systemd.notify_receiver import NotifyReceiver
from .children import Children, Proc
from .config import Listener, ManagerConfig
from .control import ControlServer
from .generations import LIVE, Generation, Generations, GenState, Phase, ReloadResult
from .readiness import ReadyMode
from .upstream import Upstream

__all__ = ["STATE_VERSION", "exec_in_place", "read_state"]  # and helpers

STATE_VERSION = 1


def exec_in_place(
    python: str,
    state: Mapping[str, Any],
    fds: Sequence[int],
    env: Mapping[str, str],
    blocked: Sequence[signal.Signals],
    pending: Sequence[signal.Signals] = (),
) -> None:
    """Replace this process with ``python -m gapless.reexec``, handing over ``fds``.

    ``pending`` are signals caught but not handled yet: raised again once
    ``blocked`` are blocked, they wait across the exec for the new process.
    Returns only if the exec failed; everything is then as it was (the pending
    signals are delivered to this process again).

    Raises:
        OSError: the exec failed.
    """
    memfd = os.memfd_create("gapless-state", 0)  # inheritable: the new process reads it
    os.write(memfd, json.dumps({"v": STATE_VERSION, **state}).encode())
    os.lseek(memfd, 0, os.SEEK_SET)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    for sig in pending:
        os.kill(os.getpid(), sig)
    try:
        for fd in fds:
            os.set_inheritable(fd, True)
        os.execve(python, [python, "-m", "gapless.reexec", str(memfd)], dict(env))
    finally:  # only reached when the exec failed
        for fd in fds:
            os.set_inheritable(fd, False)
        os.close(memfd)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def read_state(fd: int) -> dict[str, Any]:
    """Read and check the state the previous process wrote to ``fd`` (then closed).

    Raises:
        UpgradeError: the state is unreadable or of another version.
    """
    try:
        with os.fdopen(fd, "rb") as file:
            state = json.load(file)
    except (OSError, ValueError) as exc:
        raise UpgradeError(f"cannot read the manager's state from fd {fd}: {exc}") from None
    if not isinstance(state, dict) or state.get("v") != STATE_VERSION:
        raise UpgradeError(f"manager state of version {state.get('v')!r}, expected {STATE_VERSION}")
    return state


def stamp_to_json(stamp: UnixPathStamp | None) -> list[Any] | None:
    if stamp is None:
        return None
    return [stamp.path, stamp.device, stamp.inode, stamp.changed_ns]


def stamp_from_json(value: list[Any] | None) -> UnixPathStamp | None:
    return None if value is None else UnixPathStamp(*value)


@dataclass(frozen=True)
class Handover:
    """What a manager hands over to the process it execs in place."""

    config: ManagerConfig
    control_path: str
    control: ControlServer
    receiver: NotifyReceiver
    listeners: Sequence[Listener]
    machine: Generations
    children: Children
    upstream: Upstream
    born: float
    upgrades: int
    recoveries: int = 0
    recovered_at: tuple[float, ...] = ()  # monotonic times of the recent recoveries


def upgrade_refusal(machine: Generations) -> str | None:
    """Why the manager cannot exec itself now, or None: only a quiet manager does."""
    if machine.phase is not Phase.RUNNING:
        return "the manager is stopping"
    if machine.reloading:
        return "a reload is under way"
    for gen in machine.in_state(GenState.KILLED, GenState.DRAINING):
        if gen.state is GenState.KILLED or gen.exit_status is not None:
            return f"generation {gen.number} is being killed"
    return None


def export_state(handover: Handover) -> tuple[dict[str, Any], list[int]]:
    """The state the new process resumes from, and the fds it must keep.

    Every generation whose leader still runs is carried; one whose leader was
    reaped (its group lingering) cannot be watched by the new process: see
    :func:`unadoptable`.
    """
    machine = handover.machine
    procs = handover.children.procs
    live = [gen for gen in machine.in_state(*LIVE) if gen.number in procs]
    live = [gen for gen in live if procs[gen.number].status is None]
    generations = generations_to_json(live, procs)
    last = machine.last_reload
    control = handover.control
    receiver = handover.receiver
    state = {
        "config": config_to_json(handover.config),
        "control": {
            "fd": control.fileno(),
            "path": handover.control_path,
            "stamp": stamp_to_json(control.stamp),
        },
        "notify": {
            "fd": receiver.fileno(),
            "address": receiver.address,
            "identity": receiver.identity,
        },
        "listeners": listeners_to_json(handover.listeners),
        "generations": generations,
        "last_reload": None if last is None else {**last.__dict__, "requests": ()},
        "upstream": handover.upstream.export(),
        "born": handover.born,
        "upgrades": handover.upgrades + 1,
        "recoveries": handover.recoveries,
        "recovered_at": list(handover.recovered_at),
        "stopping": None if machine.phase is Phase.RUNNING else machine.exit_code,
        "queued": machine.queued is not None,
        "watchdog": _watchdog_to_json(handover.children),
    }
    fds = [control.fileno(), receiver.fileno()]
    if handover.children.watchdog is not None:  # its pipe open across the exec: no EOF
        fds.append(handover.children.watchdog.fileno())
    fds += [item.sock.fileno() for item in handover.listeners]
    fds += [g["stderr_fd"] for g in generations if g["stderr_fd"] is not None]
    return state, fds


def unadoptable(machine: Generations, children: Children) -> list[Proc]:
    """The generations still live whose leader was reaped already: their group
    lingers, and only a pidfd of the leader could be handed over."""
    procs = children.procs
    live = [procs[g.number] for g in machine.in_state(*LIVE) if g.number in procs]
    return [proc for proc in live if proc.status is not None]


def adopt_generations(
    state: Mapping[str, Any], children: Children, machine: Generations, upstream: Upstream
) -> None:
    """In the new process: watch the generations handed over and restore their states
    (and, after a recovery, a stop or a follow-up reload under way)."""
    handed_over = generations_from_json(state["generations"])
    children.adopt_watchdog(state.get("watchdog"))
    for gen, pid, stderr_fd in handed_over:
        children.adopt(gen.number, pid, stderr_fd)
    last = state["last_reload"]
    last_reload = None if last is None else ReloadResult(**{**last, "requests": ()})
    machine.restore([gen for gen, _, _ in handed_over], last_reload)
    if state.get("queued"):
        machine.queued = ()
    if state.get("stopping") is not None:
        machine.phase = Phase.STOPPING
        machine.exit_code = int(state["stopping"])
    upstream.restore(state["upstream"])


def _watchdog_to_json(children: Children) -> dict[str, int] | None:
    watchdog = children.watchdog
    return None if watchdog is None else {"pid": watchdog.pid, "fd": watchdog.fileno()}


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
    generations: Sequence[Generation], procs: Mapping[int, Proc]
) -> list[dict[str, Any]]:
    """The live generations (leaders not yet reaped) with their pid and stderr pipe."""
    result = []
    for gen in generations:
        proc = procs[gen.number]
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
            }
        )
    return result


def generations_from_json(
    value: Sequence[Mapping[str, Any]],
) -> list[tuple[Generation, int, int | None]]:
    """``(generation, leader pid, stderr fd)`` for each generation handed over."""
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
        )
        for item in value
    ]
