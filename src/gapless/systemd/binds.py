"""The listeners for a list of binds: inherited sockets that match them taken
first (:func:`~gapless.systemd.listen_fds.match_binds`: by name, then address,
then host name), the rest opened. Library mode and ``gapless run`` both get
their sockets here.

Example::

    inherited = consume_listen_fds(os.environ)
    listeners = take_or_open([parse_bind("web=:8000")], inherited, own_inherited=False)
    for _, sock in inherited:  # what no bind asked for
        sock.close()
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import GaplessError
from ..sockets.addresses import Bind
from ..sockets.listeners import (
    DEFAULT_BACKLOG,
    UnixPathStamp,
    listener_address,
    open_listener,
    remove_unix_path,
    stamp_unix_path,
)
from .listen_fds import match_binds

__all__ = ["Listener", "take_or_open"]


@dataclass
class Listener:
    """A listening socket this process holds, and what it came from."""

    name: str | None
    sock: socket.socket
    stamp: UnixPathStamp | None  # set for a unix path ours to unlink at the final stop
    bind: Bind | None = None  # None for an inherited socket taken as is
    inherited: bool = False

    @property
    def inode(self) -> int:
        """The socket's inode, as /proc shows it (for the accept readiness check)."""
        return os.fstat(self.sock.fileno()).st_ino


def take_or_open(
    binds: Sequence[Bind],
    inherited: list[tuple[str | None, socket.socket]],
    *,
    own_inherited: bool,
    close_unmatched: bool = False,
    backlog: int = DEFAULT_BACKLOG,
    mode: int | None = None,
) -> list[Listener]:
    """One listener per bind, in order; the inherited sockets taken leave ``inherited``.

    Args:
        binds: what is asked for.
        inherited: ``(name, socket)`` passed to this process; those taken are removed.
        own_inherited: an inherited unix path is ours to unlink at the final stop
            (a gapless predecessor bound it; one systemd bound is systemd's).
        close_unmatched: close the inherited sockets no bind matches first, so that
            a port they hold is free to be opened anew.
        backlog, mode: for the sockets opened.

    Raises:
        ListenError: a bind could not be opened; the ones opened here are closed.
    """
    plan = match_binds(binds, [(name, listener_address(sock)) for name, sock in inherited])
    if close_unmatched:
        for index in plan.close:
            inherited[index][1].close()
    listeners: list[Listener] = []
    try:
        for i, bind in enumerate(binds):
            if i in plan.reuse:
                sock = inherited[plan.reuse[i]][1]
                stamp = stamp_unix_path(sock) if own_inherited else None
                listeners.append(Listener(bind.name, sock, stamp, bind, inherited=True))
            else:
                sock = open_listener(bind, backlog=backlog, mode=mode)
                listeners.append(Listener(bind.name, sock, stamp_unix_path(sock), bind))
    except GaplessError:
        for listener in listeners:
            if not listener.inherited:
                listener.sock.close()
                remove_unix_path(listener.stamp)
        raise
    gone = set(plan.reuse.values()) | (set(plan.close) if close_unmatched else set())
    inherited[:] = [item for index, item in enumerate(inherited) if index not in gone]
    return listeners
