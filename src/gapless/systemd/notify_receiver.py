"""The receiving side of sd_notify(3): a datagram socket that knows who sent what.

A manager creates a :class:`NotifyReceiver`, puts its ``address`` in a child's
``NOTIFY_SOCKET``, and reads :class:`Notification` values carrying the sender's
pid, uid and gid as the kernel attached them (SO_PASSCRED). Any fds a sender
attaches (``systemd-notify`` sends one with ``BARRIER=1``) are closed at once,
unless the receiver plays systemd's fd store (``keep_fds=True``): then they come
with the notification, for the caller to close.
"""

from __future__ import annotations

import array
import os
import secrets
import socket
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import NotifyError
from ..proc.procfs import stat_fields
from ..sockets.credentials import UCRED, unpack_credentials
from .notify import MAX_MESSAGE, notify_sockaddr, parse_message

__all__ = ["Notification", "NotifyReceiver", "in_process_tree"]

_SCM_MAX_FD = 253  # the kernel's limit of fds in one SCM_RIGHTS message
_ANCILLARY_SIZE = socket.CMSG_SPACE(UCRED.size) + socket.CMSG_SPACE(_SCM_MAX_FD * 4)


@dataclass(frozen=True)
class Notification:
    """One datagram received, with the sender's credentials as the kernel saw them.

    ``pid`` is 0 when the sender lives in a pid namespace this process cannot see.
    """

    pid: int
    uid: int
    gid: int
    fields: Mapping[str, str]
    fds: tuple[int, ...] = ()  # only with NotifyReceiver(keep_fds=True); the caller's

    @property
    def ready(self) -> bool:
        return self.fields.get("READY") == "1"

    @property
    def reloading(self) -> bool:
        return self.fields.get("RELOADING") == "1"

    @property
    def stopping(self) -> bool:
        return self.fields.get("STOPPING") == "1"

    @property
    def status(self) -> str | None:
        return self.fields.get("STATUS")

    @property
    def mainpid(self) -> int | None:
        """``MAINPID`` if it is a positive decimal pid, else None."""
        value = self.fields.get("MAINPID", "")
        return int(value) if value.isascii() and value.isdigit() and int(value) > 0 else None


class NotifyReceiver:
    """A ``NOTIFY_SOCKET`` for children: a non-blocking datagram socket that asks
    the kernel for each sender's credentials.

    Args:
        address: ``/a/path`` or ``@abstract-name``; default: a fresh abstract name
            unique to this process and instance.
        keep_fds: hand the fds a datagram carries (``FDSTORE=1``) to the caller in
            :attr:`Notification.fds` instead of closing them.

    Raises:
        NotifyError: the address is malformed or cannot be bound (path taken,
            directory missing).
    """

    def __init__(self, address: str | None = None, *, keep_fds: bool = False) -> None:
        self._keep_fds = keep_fds
        if address is None:
            address = f"@gapless/notify/{os.getpid()}/{secrets.token_hex(8)}"
        sockaddr = notify_sockaddr(address, "notify address")
        self.address = address
        self._identity: tuple[int, int] | None = None
        flags = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        self._sock = socket.socket(socket.AF_UNIX, flags)
        try:
            # Before bind: a datagram queued before SO_PASSCRED would carry no credentials.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self._sock.bind(sockaddr)
            if not sockaddr.startswith("\0"):
                stat = os.lstat(address)
                self._identity = (stat.st_dev, stat.st_ino)
        except OSError as exc:
            self._sock.close()
            raise NotifyError(
                f"cannot bind notify socket {address!r}: {exc.strerror or exc}; choose another"
            ) from None

    @classmethod
    def adopt(cls, fd: int, address: str, identity: Sequence[int] | None = None) -> NotifyReceiver:
        """Wrap the receiver socket a process kept across its own exec.

        Args:
            fd: the socket, still bound to ``address`` with SO_PASSCRED set.
            address: as it was given to the children in ``NOTIFY_SOCKET``.
            identity: the :attr:`identity` of the receiver that bound it; without
                it a path address is not unlinked on close.

        Returns:
            The receiver.
        """
        receiver = cls.__new__(cls)
        receiver.address = address
        receiver._keep_fds = False
        receiver._identity = None if identity is None else (int(identity[0]), int(identity[1]))
        receiver._sock = socket.socket(fileno=fd)
        os.set_inheritable(fd, False)
        return receiver

    @property
    def identity(self) -> tuple[int, int] | None:
        """(device, inode) of the socket file this receiver bound and removes at
        close; None for an abstract address."""
        return self._identity

    def fileno(self) -> int:
        """The socket's fd, readable when a datagram is pending (for selectors, asyncio)."""
        return self._sock.fileno()

    def receive(self) -> Notification | None:
        """Read one pending datagram.

        Returns:
            The notification, or None if no datagram is pending.

        Raises:
            NotifyError: the datagram was oversized, truncated, without credentials
                or malformed. It is consumed all the same, so the next call reads
                the next datagram. Any fds it carried are closed already.
        """
        try:
            data, ancillary, flags, _ = self._sock.recvmsg(
                MAX_MESSAGE, _ANCILLARY_SIZE, socket.MSG_CMSG_CLOEXEC
            )
        except BlockingIOError:
            return None
        fds, credentials = _fds_and_credentials(ancillary)
        try:
            if flags & socket.MSG_TRUNC:
                raise NotifyError(f"notification over {MAX_MESSAGE} bytes dropped; shorten it")
            if flags & socket.MSG_CTRUNC:
                raise NotifyError("notification with too much ancillary data dropped")
            if credentials is None:
                raise NotifyError("notification without sender credentials dropped")
            fields = parse_message(data)
        except NotifyError:
            _close(fds)
            raise
        if not self._keep_fds:
            _close(fds)
            fds = []
        pid, uid, gid = credentials
        return Notification(pid, uid, gid, types.MappingProxyType(fields), tuple(fds))

    def close(self) -> None:
        """Close the socket and remove its file, unless someone replaced it. Idempotent."""
        if self._sock.fileno() == -1:
            return
        self._sock.close()
        if self._identity is not None:
            try:
                stat = os.lstat(self.address)
                if (stat.st_dev, stat.st_ino) == self._identity:
                    os.unlink(self.address)
            except FileNotFoundError:
                pass

    def __enter__(self) -> NotifyReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NotifyReceiver(address={self.address!r})"


def _fds_and_credentials(
    ancillary: list[tuple[int, int, bytes]],
) -> tuple[list[int], tuple[int, int, int] | None]:
    """The fds passed (closed by the caller unless kept: sd_notify_barrier waits for
    that) and the ucred."""
    credentials = None
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        elif kind == socket.SCM_CREDENTIALS:
            credentials = unpack_credentials(data) or credentials
    return list(fds), credentials


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def in_process_tree(pid: int, root: int) -> bool:
    """Whether ``pid`` is ``root`` or one of its descendants, by /proc's parent links.

    A process whose parent died was reparented (to init or a subreaper) and so is
    no longer in the tree; that is the answer wanted for a sender's pid.

    Args:
        pid: the process to place, e.g. :attr:`Notification.pid`.
        root: the supposed ancestor, e.g. a child the caller spawned and has not reaped.

    Returns:
        True if ``root`` is ``pid`` or an ancestor of it; False otherwise, and if a
        process on the way vanished.
    """
    seen: set[int] = set()
    while pid > 0 and pid not in seen:
        if pid == root:
            return True
        seen.add(pid)
        pid = _parent_pid(pid)
    return False


def _parent_pid(pid: int) -> int:
    """ppid from /proc/<pid>/stat, or 0 if the process is gone."""
    fields = stat_fields(pid)
    return int(fields[1]) if fields is not None and fields[1].isdigit() else 0
