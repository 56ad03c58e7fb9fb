"""Passing sockets between two unrelated processes over a unix socket (HAProxy's ``-x``).

A supervisor restart stops the process it watches and starts a new one. With
``gapless run --handoff`` the old manager keeps serving, detached, and the new
one takes the old one's sockets through a *handoff socket* instead of binding
anew, then, once its own generation is ready, tells the old one to retire.

The handoff socket is a ``SOCK_SEQPACKET`` unix socket, so each message keeps
its boundaries and carries its fds with it. Its file is 0600, and both sides
check the other's uid (``SO_PEERCRED``): only the same user or root may pass or
take sockets. The conversation, one JSON object per message::

    client: {"v": 1, "op": "take"}
    server: {"v": 1, "op": "fds", "names": [...], "more": true, "pid": P}  + fds
            ... at most 253 fds per message (the kernel's SCM_MAX_FD), each
            message naming its own fds, the last one with "more": false
    client: {"v": 1, "op": "retire"}      (once the client serves)
    server: {"v": 1, "op": "retiring", "pid": P}

A client that leaves without ``retire`` (its server failed to start) changes
nothing: the server keeps serving.

Example::

    server = HandoffServer("/run/app.handoff")         # the running instance
    session = server.accept()                          # its fd became readable
    if session and session.receive() == "take":
        session.send_sockets([("web", sock)])

The taking side is :func:`gapless.sockets.takeover.take_sockets`.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import HandoffError
from .credentials import peer_credentials
from .listeners import remove_unix_path, stamp_unix_path

__all__ = [
    "MAX_FDS_PER_MESSAGE",
    "HandoffServer",
    "HandoffSession",
    "chunks",
    "receive_message",
    "send_message",
    "uid_refusal",
]

PROTOCOL_VERSION = 1
#: The kernel refuses more fds in one SCM_RIGHTS message (SCM_MAX_FD).
MAX_FDS_PER_MESSAGE = 253
_MAX_MESSAGE = 1 << 18  # names of 253 fds fit many times over
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * 4)


class HasFileno(Protocol):
    def fileno(self) -> int: ...


Named = tuple[str, socket.socket]
Offered = tuple[str, HasFileno]  # a socket, or a server object owning one


def chunks(items: Sequence[Offered], size: int = MAX_FDS_PER_MESSAGE) -> list[Sequence[Offered]]:
    """``items`` cut into messages of at most ``size`` fds; one empty message for none."""
    return [items[start : start + size] for start in range(0, len(items), size)] or [[]]


class HandoffServer:
    """The listening handoff socket of the running instance: non-blocking, 0600.

    Args:
        path: where to bind; a stale socket file there (nobody listening) is replaced.

    Raises:
        HandoffError: someone listens on ``path`` already, or it cannot be bound.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        _clear_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.bind(path)
            # Before listen(): no client can connect while the mode is still the umask's.
            os.chmod(path, 0o600)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise HandoffError(
                f"cannot bind handoff socket {path!r}: {exc.strerror or exc}; "
                "choose another with --handoff=PATH"
            ) from None
        sock.setblocking(False)
        self._sock = sock
        self._stamp = stamp_unix_path(sock)

    @classmethod
    def adopt(cls, sock: socket.socket, path: str) -> HandoffServer:
        """Wrap a listening handoff socket taken over from the previous instance; its
        path is not this instance's to remove until :meth:`own_path`."""
        server = cls.__new__(cls)
        server.path = path
        server._sock = sock
        server._stamp = None
        sock.setblocking(False)
        return server

    def own_path(self, owned: bool) -> None:
        """Whether :meth:`close` removes the path: yes once the previous instance
        retired, no once this one handed the socket on."""
        self._stamp = stamp_unix_path(self._sock) if owned else None

    @property
    def sock(self) -> socket.socket:
        return self._sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def accept(self) -> HandoffSession | None:
        """Accept one client; None if there was none or its uid was refused."""
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return None
        pid, uid, _ = peer_credentials(conn)
        # The holder speaks first, refusal or greeting, and a taker sends nothing
        # before reading it: closing a refused peer with its request unread would
        # reset the connection and lose the reason.
        refused = uid not in (0, os.getuid())
        greeting = (
            {"op": "error", "error": uid_refusal(uid)}
            if refused
            else {"op": "hello", "pid": os.getpid()}
        )
        try:
            send_message(conn, greeting)
        except OSError:
            refused = True  # a probe that connected and left
        if refused:
            conn.close()
            return None
        conn.setblocking(False)
        return HandoffSession(conn, pid)

    def close(self) -> None:
        """Close, and remove the path if this instance owns it and it is still its file."""
        if self._sock.fileno() != -1:
            self._sock.close()
            remove_unix_path(self._stamp)


@dataclass
class HandoffSession:
    """The server's side of one client: read its requests, pass the sockets."""

    sock: socket.socket
    pid: int  # the client's, as the kernel saw it at connect()
    sent: bool = False  # the sockets went out; the client may be serving on them

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> str | None:
        """The client's next request (``"take"`` or ``"retire"``); ``""`` if none is
        pending; None once the client has gone.

        Raises:
            HandoffError: a malformed request (the session should be closed).
        """
        try:
            data = self.sock.recv(_MAX_MESSAGE)
        except BlockingIOError:
            return ""
        except OSError:
            return None
        if not data:
            return None
        op = _decode(data, "request").get("op")
        if op not in ("take", "retire"):
            raise HandoffError(f"unknown handoff request {op!r}; expected take or retire")
        return str(op)

    def send_sockets(self, items: Sequence[Offered], timeout: float = 5.0) -> None:
        """Send every socket with its name, at most 253 per message.

        Raises:
            HandoffError: the client is gone or does not read within ``timeout``.
        """
        parts = chunks(items)
        self.sock.settimeout(timeout)
        try:
            for index, part in enumerate(parts):
                names = [name for name, _ in part]
                more = index < len(parts) - 1
                message: dict[str, Any] = {"op": "fds", "names": names, "more": more}
                send_message(self.sock, message, [sock.fileno() for _, sock in part])
        except OSError as exc:
            raise HandoffError(f"cannot pass the sockets to pid {self.pid}: {exc}") from None
        finally:
            self.sock.setblocking(False)
        self.sent = True

    def acknowledge_retire(self) -> None:
        """Tell the client this instance is retiring; never fails (it may have gone)."""
        with contextlib.suppress(OSError):
            send_message(self.sock, {"op": "retiring"})

    def close(self) -> None:
        self.sock.close()


def send_message(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps({"v": PROTOCOL_VERSION, "pid": os.getpid(), **message}).encode()
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], ancillary)


def receive_message(sock: socket.socket, who: str) -> tuple[dict[str, Any], list[int]]:
    """One message and the fds it carried (close-on-exec)."""
    data, ancillary, flags, _ = sock.recvmsg(_MAX_MESSAGE, _ANCILLARY, socket.MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    try:
        if not data:
            raise HandoffError(f"{who} closed the connection before answering")
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise HandoffError(f"{who} sent a message too large to receive whole")
        return _decode(data, f"answer from {who}"), list(fds)
    except HandoffError:
        for fd in fds:
            os.close(fd)
        raise


def _decode(data: bytes, what: str) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise HandoffError(f"{what} {data[:60]!r} is not JSON") from None
    if not isinstance(message, dict) or message.get("v") != PROTOCOL_VERSION:
        raise HandoffError(f"{what} {data[:60]!r} is not a version {PROTOCOL_VERSION} message")
    if message.get("op") == "error":
        raise HandoffError(str(message.get("error")))
    return message


def uid_refusal(uid: int) -> str:
    return f"uid {uid} may not exchange sockets with uid {os.getuid()}; run both as one user"


def _clear_stale(path: str) -> None:
    """Remove a socket file nobody listens on; refuse to take a live one."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return  # bind() reports what is in the way
    except OSError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError:
        return  # e.g. another socket type there: bind() below reports the clash
    finally:
        probe.close()
    raise HandoffError(
        f"another instance serves handoff socket {path!r}; take its sockets "
        "(gapless run --handoff does) or choose another path"
    )
