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
must print the state version this one writes), because an exec that fails to
start would leave the children orphaned and the sockets closed.

Example::

    gapless upgrade                       # same interpreter path, new code on disk
    gapless upgrade --python /srv/venv2/bin/python
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UpgradeError
from ..sockets.listeners import UnixPathStamp, adopt_listener
from ..systemd.notify import NotifyReceiver
from .children import Children, Proc
from .config import Listener, ManagerConfig
from .control import ControlServer
from .generations import Generation, Generations, GenState, Phase, ReloadResult
from .readiness import ReadyMode
from .upstream import Upstream

__all__ = ["STATE_VERSION", "check_target", "exec_in_place", "read_state"]  # and helpers

STATE_VERSION = 1
_CHECK_TIMEOUT = 30.0


def check_target(python: str, env: Mapping[str, str]) -> None:
    """Make sure ``python`` runs a gapless that can resume from our state.

    Raises:
        UpgradeError: it cannot be run, has no gapless, or speaks another state version.
    """
    try:
        result = subprocess.run(
            [python, "-m", "gapless.reexec", "--check"],
            capture_output=True,
            text=True,
            timeout=_CHECK_TIMEOUT,
            env=dict(env),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpgradeError(f"cannot upgrade with {python!r}: {exc}; check the path") from None
    if result.returncode != 0 or result.stdout.strip() != str(STATE_VERSION):
        why = (result.stderr.strip().splitlines() or [result.stdout.strip()])[-1]
        raise UpgradeError(
            f"cannot upgrade with {python!r}: its gapless cannot resume state version "
            f"{STATE_VERSION} ({why or 'no answer'}); install a compatible gapless there"
        )


def exec_in_place(
    python: str,
    state: Mapping[str, Any],
    fds: Sequence[int],
    env: Mapping[str, str],
    blocked: Sequence[signal.Signals],
) -> None:
    """Replace this process with ``python -m gapless.reexec``, handing over ``fds``.

    Returns only if the exec failed; everything is then as it was.

    Raises:
        OSError: the exec failed.
    """
    memfd = os.memfd_create("gapless-state", 0)  # inheritable: the new process reads it
    os.write(memfd, json.dumps({"v": STATE_VERSION, **state}).encode())
    os.lseek(memfd, 0, os.SEEK_SET)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
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
    """The state the new process resumes from, and the fds it must keep."""
    machine = handover.machine
    live = machine.in_state(GenState.ACTIVE, GenState.DRAINING)
    generations = generations_to_json(live, handover.children.procs)
    last = machine.last_reload
    control = handover.control
    state = {
        "config": config_to_json(handover.config),
        "control": {
            "fd": control.fileno(),
            "path": handover.control_path,
            "stamp": stamp_to_json(control.stamp),
        },
        "notify": {"fd": handover.receiver.fileno(), "address": handover.receiver.address},
        "listeners": listeners_to_json(handover.listeners),
        "generations": generations,
        "last_reload": None if last is None else {**last.__dict__, "requests": ()},
        "upstream": handover.upstream.export(),
        "born": handover.born,
        "upgrades": handover.upgrades + 1,
        "watchdog": _watchdog_to_json(handover.children),
    }
    fds = [control.fileno(), handover.receiver.fileno()]
    if handover.children.watchdog is not None:  # its pipe open across the exec: no EOF
        fds.append(handover.children.watchdog.fileno())
    fds += [item.sock.fileno() for item in handover.listeners]
    fds += [g["stderr_fd"] for g in generations if g["stderr_fd"] is not None]
    return state, fds


def adopt_generations(
    state: Mapping[str, Any], children: Children, machine: Generations, upstream: Upstream
) -> None:
    """In the new process: watch the generations handed over and restore their states."""
    handed_over = generations_from_json(state["generations"])
    children.adopt_watchdog(state.get("watchdog"))
    for gen, pid, stderr_fd in handed_over:
        children.adopt(gen.number, pid, stderr_fd)
    last = state["last_reload"]
    last_reload = None if last is None else ReloadResult(**{**last, "requests": ()})
    machine.restore([gen for gen, _, _ in handed_over], last_reload)
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
