"""Opening and adopting listening sockets.

Over 300 lines on purpose: opening (every bind form), adopting (every check an
fd must pass) and owning unix paths are one concern seen from three sides, and
each error they raise names the bind and the fix.

Every socket this module returns is a stream socket that is already listening,
so it can be handed to any number of processes at once. The sockets it opens
are blocking and not inheritable (Python's default): a spawner passes them on
explicitly, on the fds it chooses.

A unix socket path is removed only at final stop, and only when it is still the
file we bound: :func:`stamp_unix_path` records the file's identity right after
binding and :func:`remove_unix_path` checks it, so a path that a successor has
re-bound in the meantime is left alone.

Example::

    >>> from gapless.sockets.addresses import parse_bind
    >>> sock = open_listener(parse_bind("127.0.0.1:0"))
    >>> address = listener_address(sock)
    >>> address.host, address.port > 0
    ('127.0.0.1', True)
    >>> sock.close()
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass
from typing import Any

from ..errors import (
    AddressInUseError,
    AdoptError,
    ListenError,
    ListenPermissionError,
    UnixPathTooLongError,
)
from .addresses import Bind, FdAddress, TcpAddress, UnixAddress

__all__ = [
    "DEFAULT_BACKLOG",
    "UnixPathStamp",
    "adopt_listener",
    "listener_address",
    "open_listener",
    "remove_unix_path",
    "stamp_unix_path",
]

# With nobody accepting, the kernel queues only backlog+1 connections; the rest
# wait for a SYN retransmit (about a second), so queue as many as allowed.
DEFAULT_BACKLOG = socket.SOMAXCONN

_UNIX_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_ADOPT_HINT = "pass a socket after listen()"
_FILE_KINDS = {stat.S_IFIFO: "a pipe", stat.S_IFREG: "a regular file", stat.S_IFDIR: "a directory"}
_SOCKET_KINDS = {socket.SOCK_DGRAM: "a datagram", socket.SOCK_SEQPACKET: "a seqpacket"}


def open_listener(
    bind: Bind, *, backlog: int = DEFAULT_BACKLOG, mode: int | None = None
) -> socket.socket:
    """Open (or, for ``fd://N``, adopt) a listening stream socket for ``bind``.

    Args:
        bind: where to listen, as parsed by :func:`gapless.sockets.addresses.parse_bind`.
        backlog: the accept queue length passed to ``listen()``.
        mode: permission bits for a unix socket path, applied before ``listen()``
            so no client connects earlier; ignored for TCP, abstract and fd binds.
            ``None`` leaves what the umask gives.

    Returns:
        A blocking, non-inheritable, listening socket.

    Raises:
        AddressInUseError: the address is taken, or a unix path exists and is
            not a stale socket file.
        ListenPermissionError: the process may not bind the address.
        UnixPathTooLongError: the unix path does not fit in ``sockaddr_un``.
        ListenError: any other reason, e.g. an unknown host, a missing directory.
        AdoptError: an ``fd://N`` bind names an fd that is not a listening socket.
    """
    address = bind.address
    if isinstance(address, FdAddress):
        return adopt_listener(address.fd)
    if isinstance(address, TcpAddress):
        return _open_tcp(address, backlog)
    return _open_unix(address, backlog, mode)


def adopt_listener(fd: int) -> socket.socket:
    """Wrap an open listening stream socket, asking the fd itself what it is.

    On refusal the fd is left open: it still belongs to the caller. On success
    the returned socket owns the fd, which is made close-on-exec. The fd's
    blocking mode is kept (it is shared with every other holder of the socket)
    and the socket object reports it truthfully.

    Args:
        fd: the file descriptor, e.g. 3 for the first ``LISTEN_FDS`` socket.

    Returns:
        A socket of the fd's own family (AF_INET, AF_INET6 or AF_UNIX).

    Raises:
        AdoptError: the fd is not open, not a socket, not a TCP or unix stream
            socket, or not listening.
    """
    _require_socket(fd)
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise AdoptError(f"fd {fd} cannot be adopted: {exc.strerror}; {_ADOPT_HINT}") from exc
    try:
        _require_listening_stream(sock, fd)
        os.set_inheritable(fd, False)
        if not os.get_blocking(fd):
            sock.settimeout(0.0)
    except BaseException:
        sock.detach()
        raise
    return sock


def listener_address(sock: socket.socket) -> TcpAddress | UnixAddress:
    """The address ``sock`` is actually bound to, e.g. the real port of a ``:0`` bind.

    Args:
        sock: a bound TCP or unix socket.

    Returns:
        A :class:`TcpAddress` with the literal IP, the port and the family, or a
        :class:`UnixAddress` with the path (as bound) or the abstract name.

    Raises:
        AdoptError: the socket is of another family or has no address.
    """
    name = sock.getsockname()
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return TcpAddress(host=name[0], port=name[1], family=sock.family)
    if sock.family == socket.AF_UNIX and name:
        if isinstance(name, bytes):  # Python returns an abstract name as bytes
            return UnixAddress(path=name[1:].decode("utf-8", "surrogateescape"), abstract=True)
        return UnixAddress(path=name)
    raise AdoptError(f"socket fd {sock.fileno()} ({sock.family.name}) has no TCP or unix address")


@dataclass(frozen=True)
class UnixPathStamp:
    """A unix socket file as we bound it: its absolute path and identity then.

    The ctime is part of the identity because a filesystem may give a freed
    inode number to the next file created, e.g. a successor's socket.
    """

    path: str
    device: int
    inode: int
    changed_ns: int


def stamp_unix_path(sock: socket.socket) -> UnixPathStamp | None:
    """Record which file backs a unix socket path, to remove it safely later.

    Call it right after :func:`open_listener`, while the path is surely ours.
    Do not stamp a socket someone else bound (e.g. one systemd passed): its
    owner removes the path.

    Args:
        sock: a listening socket.

    Returns:
        The stamp, or ``None`` for a TCP or abstract socket or a path already gone.
    """
    address = listener_address(sock)
    if not isinstance(address, UnixAddress) or address.abstract:
        return None
    path = os.path.abspath(address.path)
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(info.st_mode):
        return None
    return UnixPathStamp(path, info.st_dev, info.st_ino, info.st_ctime_ns)


def remove_unix_path(stamp: UnixPathStamp | None) -> bool:
    """Unlink a unix socket path at final stop if it is still the file we bound.

    A stale file left behind is harmless (:func:`open_listener` replaces stale
    socket files), so failing to remove it is not an error.

    Args:
        stamp: from :func:`stamp_unix_path`; ``None`` does nothing.

    Returns:
        True if the path was removed; False if it was gone, replaced by another
        file (a successor's socket), or could not be removed.
    """
    if stamp is None:
        return False
    try:
        info = os.lstat(stamp.path)
        now = UnixPathStamp(stamp.path, info.st_dev, info.st_ino, info.st_ctime_ns)
        if stat.S_ISSOCK(info.st_mode) and now == stamp:
            os.unlink(stamp.path)
            return True
    except OSError:
        pass
    return False


def _open_tcp(address: TcpAddress, backlog: int) -> socket.socket:
    family, sockaddr = _resolve(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # One socket per family, as the bind says: [::] must not take IPv4 too.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise _tcp_error(address, exc) from exc
    return sock


def _resolve(address: TcpAddress) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, address.family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid host name"
        raise ListenError(
            f"cannot listen on {str(address)!r}: cannot resolve host {address.host!r} "
            f"({reason}); use an IP address or a name this host can resolve"
        ) from exc
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _open_unix(address: UnixAddress, backlog: int, mode: int | None) -> socket.socket:
    size = len(address.sockaddr.encode("utf-8", "surrogateescape"))
    if size > _UNIX_PATH_MAX:
        raise UnixPathTooLongError(
            f"cannot listen on {str(address)!r}: the path is {size} bytes, the limit is "
            f"{_UNIX_PATH_MAX}; choose a shorter path"
        )
    if not address.abstract:
        _clear_stale_path(address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stamp = None
    try:
        sock.bind(address.sockaddr)
        stamp = stamp_unix_path(sock)
        if mode is not None and not address.abstract:
            os.chmod(address.path, mode)
            stamp = stamp_unix_path(sock)  # chmod changed the ctime we compare
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        remove_unix_path(stamp)
        raise _unix_error(address, exc) from exc
    return sock


def _clear_stale_path(address: UnixAddress) -> None:
    """Remove a socket file nobody listens on; refuse anything else at the path."""
    try:
        info = os.lstat(address.path)
    except OSError:
        return  # absent, or unreachable: bind() reports the precise reason
    where = f"cannot listen on {str(address)!r}"
    if not stat.S_ISSOCK(info.st_mode):
        raise AddressInUseError(
            f"{where}: the path exists and is not a socket; remove it or choose another path"
        )
    if _is_in_use(address.path):
        raise AddressInUseError(
            f"{where}: another process holds this socket; stop it or choose another path"
        )
    try:
        os.unlink(address.path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _unix_error(address, exc) from exc


def _is_in_use(path: str) -> bool:
    # Non-blocking, so a live listener with a full queue answers EAGAIN at once.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # EAGAIN, EACCES, EPROTOTYPE: someone owns it, not ours to delete
    finally:
        probe.close()
    return True


def _tcp_error(address: TcpAddress, exc: OSError) -> ListenError:
    where = f"cannot listen on {str(address)!r}"
    if exc.errno == errno.EADDRINUSE:
        return AddressInUseError(
            f"{where}: address already in use; stop the other process or choose another port"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ListenPermissionError(
            f"{where}: {_reason(exc)}; ports below 1024 need root or CAP_NET_BIND_SERVICE, "
            "choose a higher port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ListenError(
            f"{where}: {address.host} is not an address of this host; "
            "use a local interface's address, or 0.0.0.0 / [::] for all"
        )
    return ListenError(f"{where}: {_reason(exc)}")


def _unix_error(address: UnixAddress, exc: OSError) -> ListenError:
    where = f"cannot listen on {str(address)!r}"
    if exc.errno == errno.EADDRINUSE:
        return AddressInUseError(
            f"{where}: address already in use; stop the other process or choose another path"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ListenPermissionError(
            f"{where}: {_reason(exc)}; choose a directory this user may write to"
        )
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        directory = os.path.dirname(address.path) or "."
        return ListenError(f"{where}: directory {directory!r} does not exist; create it first")
    return ListenError(f"{where}: {_reason(exc)}")


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def _require_socket(fd: int) -> None:
    try:
        info = os.fstat(fd)
    except (OSError, OverflowError) as exc:
        if isinstance(exc, OSError) and exc.errno != errno.EBADF:
            raise AdoptError(f"fd {fd} cannot be inspected: {_reason(exc)}") from exc
        raise AdoptError(
            f"fd {fd} is not open; pass the number of an open listening socket"
        ) from None
    if not stat.S_ISSOCK(info.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "not a socket")
        raise AdoptError(f"fd {fd} is {kind}, not a listening stream socket; {_ADOPT_HINT}")


def _require_listening_stream(sock: socket.socket, fd: int) -> None:
    if sock.type != socket.SOCK_STREAM:
        kind = _SOCKET_KINDS.get(sock.type, "a non-stream")
        raise AdoptError(f"fd {fd} is {kind} socket, not a listening stream socket; {_ADOPT_HINT}")
    if sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        family = getattr(sock.family, "name", str(sock.family))
        raise AdoptError(
            f"fd {fd} is an {family} socket; pass a TCP or unix stream socket after listen()"
        )
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise AdoptError(f"fd {fd} is a stream socket that is not listening; {_ADOPT_HINT}")
