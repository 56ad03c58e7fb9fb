"""How many client connections a generation still holds, read from /proc.

``gapless reload`` says "generation 1 draining ..., 3 connections left" and
``gapless status`` shows the same figure for each draining generation. A
connection counts when a process of the generation holds it as an fd and it was
accepted on one of the manager's listeners: a TCP socket on a listener's port
in any state but LISTEN, or a connected unix stream socket whose address is a
unix listener's path (the kernel gives an accepted unix socket its listener's
address). So neither the listeners themselves nor a server's own socketpairs
(asyncio's wakeup pair) nor its outgoing connections to a database count.

How: the socket inodes behind ``/proc/<pid>/fd``, matched against the TCP
connections sock_diag lists (:mod:`gapless.sockets.sockdiag`; ``/proc/<pid>/net/tcp``
and ``tcp6`` when the generation lives in another network namespace) and
against ``/proc/<pid>/net/unix``. Read on demand only, never on a timer; a process that
vanishes meanwhile, or whose fds we may not read, counts as holding nothing.

Example::

    counter = ConnectionCounter.of([listener.sock for listener in listeners])
    counter.count(group_members(leader_pid))   # e.g. 3
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .sockdiag import tcp_connections

__all__ = ["ConnectionCounter", "held_socket_inodes"]

_TCP_LISTEN = 0x0A
_TCP_CLOSE = 0x07
_UNIX_CONNECTED = 3  # SS_CONNECTED


@dataclass(frozen=True)
class ConnectionCounter:
    """Counts the connections accepted on a set of listeners.

    Args:
        tcp_ports: the local ports of the TCP listeners.
        unix_paths: the addresses of the unix listeners as /proc/net/unix shows
            them (an abstract name starts with ``@``).
        listeners: the listeners' inodes: a process that holds no other socket
            holds no connection, and the tables are not read at all.
    """

    tcp_ports: frozenset[int]
    unix_paths: frozenset[str]
    listeners: frozenset[int] = frozenset()

    @classmethod
    def of(cls, listeners: Iterable[socket.socket]) -> ConnectionCounter:
        """The counter for these listening sockets (TCP and unix; others are ignored)."""
        ports: set[int] = set()
        paths: set[str] = set()
        inodes: set[int] = set()
        for sock in listeners:
            inodes.add(os.fstat(sock.fileno()).st_ino)
            name = sock.getsockname()
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                ports.add(name[1])
            elif sock.family == socket.AF_UNIX and name:
                paths.add(_unix_name(name))
        return cls(frozenset(ports), frozenset(paths), frozenset(inodes))

    def count(self, pids: Sequence[int]) -> int:
        """The connections the processes ``pids`` hold between them.

        Args:
            pids: the processes of one generation (a socket two of them share
                counts once).

        Returns:
            How many; 0 for no pids or when /proc cannot be read.
        """
        held = held_socket_inodes(pids) - self.listeners
        if not held:  # the common case while a generation starts: no table to read
            return 0
        net = _net_directory(pids)
        found = 0
        if self.tcp_ports:
            found += self._count_tcp_sockets(net, held)
        if self.unix_paths:
            found += self._count_unix(os.path.join(net, "unix"), held)
        return found

    def _count_tcp_sockets(self, net: str, held: frozenset[int]) -> int:
        """By sock_diag in our own network namespace: the /proc tables hold every
        TIME_WAIT socket too, and reading them can stall the manager for a second."""
        ours = os.path.join(os.path.dirname(net), "ns", "net")
        try:
            if os.stat(ours).st_ino == os.stat("/proc/self/ns/net").st_ino:
                ports = tcp_connections()
                return sum(1 for inode in held if ports.get(inode) in self.tcp_ports)
        except OSError:
            pass  # another namespace, or no sock_diag: read the tables
        return sum(self._count_tcp(os.path.join(net, table), held) for table in ("tcp", "tcp6"))

    def _count_tcp(self, path: str, held: frozenset[int]) -> int:
        found = 0
        for fields in _rows(path):
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if len(fields) < 10 or int(fields[9]) not in held:
                continue
            port = int(fields[1].rpartition(":")[2], 16)
            if port in self.tcp_ports and int(fields[3], 16) not in (_TCP_LISTEN, _TCP_CLOSE):
                found += 1
        return found

    def _count_unix(self, path: str, held: frozenset[int]) -> int:
        found = 0
        for fields in _rows(path, maxsplit=7):
            # Num RefCount Protocol Flags Type St Inode Path
            if len(fields) < 8 or int(fields[6]) not in held:
                continue
            if int(fields[5], 16) == _UNIX_CONNECTED and fields[7].rstrip("\n") in self.unix_paths:
                found += 1
        return found


def held_socket_inodes(pids: Iterable[int]) -> frozenset[int]:
    """The inodes of every socket the processes ``pids`` hold as fds."""
    inodes: set[int] = set()
    for pid in pids:
        directory = f"/proc/{pid}/fd"
        try:
            names = os.listdir(directory)
        except OSError:
            continue  # gone, or not ours to look at
        for name in names:
            try:
                target = os.readlink(os.path.join(directory, name))
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return frozenset(inodes)


def _net_directory(pids: Sequence[int]) -> str:
    """The network tables as the generation sees them (its own namespace)."""
    for pid in pids:
        directory = f"/proc/{pid}/net"
        if os.path.isdir(directory):
            return directory
    return "/proc/net"


def _rows(path: str, maxsplit: int = -1) -> list[list[str]]:
    """The rows of a /proc/net table, header left out; none if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as file:
            lines = file.readlines()[1:]
    except OSError:
        return []
    return [line.split(None, maxsplit) for line in lines]


def _unix_name(name: str | bytes) -> str:
    if isinstance(name, bytes):  # an abstract name: /proc/net/unix shows NULs as '@'
        return name.replace(b"\0", b"@").decode("utf-8", "surrogateescape")
    return name
