"""Upgrading the manager itself in place: exec a new gapless, keeping the PID,
the sockets and the children.

A new gapless version (or a new virtualenv) replaces the running manager with
``execve``: the process, its PID (what systemd or a container runtime watches)
and its children stay; only the code changes. Before the exec the manager
writes its state (the generations, their pids and deadlines, which fd is which
socket) as JSON to a memfd, clears close-on-exec on the fds that must survive
(listeners, control socket, notify socket, the ``--health-bind`` socket, each
child's stderr pipe, the watchdog's pipe) and blocks the signals it handles, so
none hits a default action while no handler exists;
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
from ..systemd.notify_receiver import NotifyReceiver
from .config import Listener, ManagerConfig
from .control import ControlServer
from .driver import Driver
from .state import config_to_json, listeners_to_json, stamp_to_json
from .upstream import Upstream

__all__ = ["STATE_VERSION", "Handover", "exec_in_place", "export_state", "read_state"]

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


@dataclass(frozen=True)
class Handover:
    """What a manager hands over to the process it execs in place."""

    config: ManagerConfig
    control_path: str
    control: ControlServer
    receiver: NotifyReceiver
    listeners: Sequence[Listener]
    driver: Driver
    upstream: Upstream
    born: float
    upgrades: int
    recoveries: int = 0
    recovered_at: tuple[float, ...] = ()  # monotonic times of the recent recoveries
    health: Mapping[str, Any] | None = None  # --health-bind's socket fd and counters


def export_state(handover: Handover) -> tuple[dict[str, Any], list[int]]:
    """The state the new process resumes from (gapless.run.state), and the fds it
    must keep."""
    generations, generation_fds = handover.driver.export_generations()
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
        "generations": generations["generations"],
        "last_reload": generations["last_reload"],
        "upstream": handover.upstream.export(),
        "born": handover.born,
        "upgrades": handover.upgrades + 1,
        "recoveries": handover.recoveries,
        "recovered_at": list(handover.recovered_at),
        "stopping": generations["stopping"],
        "queued": generations["queued"],
        "watchdog": generations["watchdog"],
        "health": handover.health,
    }
    fds = [control.fileno(), receiver.fileno()]
    fds += [] if handover.health is None else [int(handover.health["fd"])]
    fds += [item.sock.fileno() for item in handover.listeners]
    return state, fds + generation_fds
