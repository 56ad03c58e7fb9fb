"""TCP connections by inode, from the kernel's sock_diag netlink interface.

Reading ``/proc/net/tcp`` costs time in proportion to every TCP socket of the
network namespace, TIME_WAIT ones included: with 60,000 of them (a busy host
after a minute of short connections) it took one to two seconds here, during
which the manager's loop stood still and a drain deadline could pass before the
stop signal was even sent. A ``SOCK_DIAG_BY_FAMILY`` dump asks the kernel for
the sockets in the wanted states only; it skips the others in C.

Example::

    >>> tcp_connections()                  # doctest: +SKIP
    {1234567: 8000, 1234570: 8000}         # inode -> local port
"""

from __future__ import annotations

import os
import socket
import struct

__all__ = ["tcp_connections", "tcp_listeners"]

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_REQUEST = struct.Struct("=BBBBI48x")  # struct inet_diag_req_v2, any socket id
_MESSAGE_SIZE = 72  # struct inet_diag_msg
_INODE_OFFSET = 68
# Every TCP state but LISTEN (10), TIME_WAIT (6) and CLOSE (7): a connection a
# process may hold; a TIME_WAIT socket belongs to no process.
_STATES = 0xFFE & ~((1 << 10) | (1 << 6) | (1 << 7))
_LISTEN = 1 << 10


def tcp_connections() -> dict[int, int]:
    """The TCP sockets of this network namespace that are neither listening nor closed.

    Returns:
        inode -> local port, IPv4 and IPv6.

    Raises:
        OSError: sock_diag is not available (then read ``/proc/net/tcp``).
    """
    return {inode: port for inode, (_, port) in _dump(_STATES).items()}


def tcp_listeners() -> dict[int, tuple[str, int]]:
    """The listening TCP sockets of this network namespace: few, so cheap to ask for.

    Returns:
        inode -> (local IP, port), IPv4 and IPv6.

    Raises:
        OSError: sock_diag is not available.
    """
    return _dump(_LISTEN)


def _dump(states: int) -> dict[int, tuple[str, int]]:
    found: dict[int, tuple[str, int]] = {}
    flags = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
    with socket.socket(socket.AF_NETLINK, flags, _NETLINK_SOCK_DIAG) as sock:
        for family in (socket.AF_INET, socket.AF_INET6):
            request = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, states)
            length = _HEADER.size + len(request)
            header = _HEADER.pack(length, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
            sock.sendto(header + request, (0, 0))
            _read_dump(sock, family, found)
    return found


def _read_dump(sock: socket.socket, family: int, found: dict[int, tuple[str, int]]) -> None:
    """Add each socket of one dump to ``found`` until the kernel says it is done."""
    while True:
        data = sock.recv(65536)
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
            if kind == _NLMSG_DONE:
                return
            if kind == _NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, offset + _HEADER.size)[0]
                raise OSError(code, os.strerror(code))
            body = offset + _HEADER.size
            if kind == _SOCK_DIAG_BY_FAMILY and length >= _HEADER.size + _MESSAGE_SIZE:
                port = int.from_bytes(data[body + 4 : body + 6], "big")
                size = 4 if family == socket.AF_INET else 16
                ip = socket.inet_ntop(family, data[body + 8 : body + 8 + size])
                (inode,) = struct.unpack_from("=I", data, body + _INODE_OFFSET)
                found[inode] = (ip, port)
            if length < _HEADER.size:
                raise OSError(f"malformed netlink message of {length} bytes")
            offset += (length + 3) & ~3
