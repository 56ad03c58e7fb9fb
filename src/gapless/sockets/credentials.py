"""Who is at the other end of a unix socket: ``struct ucred`` as the kernel gives it,
from ``SO_PEERCRED`` (stream sockets) or ``SCM_CREDENTIALS`` (datagrams)."""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

__all__ = ["UCRED", "Credentials", "peer_credentials", "unpack_credentials"]

UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Credentials(NamedTuple):
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> Credentials:
    """The process that connected (or listened on) ``sock``, as of its ``connect()``."""
    return Credentials(
        *UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size))
    )


def unpack_credentials(data: bytes) -> Credentials | None:
    """The sender of a datagram from its ``SCM_CREDENTIALS`` data; None if too short."""
    return Credentials(*UCRED.unpack_from(data)) if len(data) >= UCRED.size else None
