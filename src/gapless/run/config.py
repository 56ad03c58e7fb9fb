"""The settings of ``gapless run`` and the listeners it opens from them.

Example::

    >>> from gapless.sockets.addresses import parse_bind
    >>> config = ManagerConfig(command=["gunicorn", "app:app"], binds=[parse_bind(":8000")])
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import GaplessError
from ..sockets.addresses import Bind
from ..sockets.listeners import (
    UnixPathStamp,
    listener_address,
    open_listener,
    remove_unix_path,
    stamp_unix_path,
)
from ..systemd.listen_fds import consume_listen_fds, match_binds
from .readiness import ReadyMode

__all__ = ["Listener", "ManagerConfig", "ReadyMode", "open_listeners"]


@dataclass(frozen=True)
class ManagerConfig:
    """What ``gapless run`` was asked for; see ``gapless run --help``."""

    command: Sequence[str]
    binds: Sequence[Bind] = ()
    control_path: str | None = None  # None: default_control_path()
    pid_file: str | None = None
    ready: ReadyMode = field(default_factory=lambda: ReadyMode.parse("auto"))
    ready_timeout: float = 60.0
    drain_timeout: float = 30.0
    stop_signal: signal.Signals = signal.SIGTERM
    log_format: str = "text"
    handoff_path: str | None = None  # --handoff: None off; see gapless.run.extras.handoff
    handoff_timeout: float = 10.0
    shutdown_delay: float = 0.0
    health_bind: Bind | None = None


@dataclass
class Listener:
    name: str | None
    sock: socket.socket
    stamp: UnixPathStamp | None  # set for a path this manager bound, to unlink at stop

    @property
    def inode(self) -> int:
        """The socket's inode, as /proc shows it (for the accept readiness check)."""
        return os.fstat(self.sock.fileno()).st_ino


def open_listeners(
    binds: Sequence[Bind],
    environ: dict[str, str],
    taken: Sequence[tuple[str | None, socket.socket]] = (),
) -> list[Listener]:
    """Open the binds, taking the sockets the manager itself inherited first.

    Sockets systemd passed to the manager (socket activation, ``LISTEN_FDS``, or
    its fd store) and those ``taken`` from a previous instance (``--handoff``)
    serve the binds they match; with no bind at all, every one is used.

    Raises:
        ListenError: a bind could not be opened.
        InheritanceError, AdoptError: the manager's own ``LISTEN_*`` are broken.
    """
    inherited = consume_listen_fds(environ) + list(taken)
    if not binds:
        return [Listener(name, sock, None) for name, sock in inherited]
    plan = match_binds(binds, [(name, listener_address(sock)) for name, sock in inherited])
    for index in plan.close:
        inherited[index][1].close()
    listeners = []
    try:
        for i, bind in enumerate(binds):
            if i in plan.reuse:
                listeners.append(Listener(bind.name, inherited[plan.reuse[i]][1], None))
            else:
                sock = open_listener(bind)
                listeners.append(Listener(bind.name, sock, stamp_unix_path(sock)))
    except GaplessError:
        for listener in listeners:
            listener.sock.close()
            remove_unix_path(listener.stamp)
        raise
    return listeners
