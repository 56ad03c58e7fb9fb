"""The control socket of ``gapless run``, the manager's side: JSON lines over a
unix stream socket (the protocol and the client: gapless.run.control_client).
A few lines over 300: the server, a connection and the command table are one
protocol end; the client side already lives apart.

Every command is registered once, with its help text and the fields it takes,
in a :class:`CommandTable`; ``{"v": 1, "cmd": "help"}`` lists them.

Only the manager's own user and root may connect: the socket file is 0600, its
default directory 0700, and each peer's uid is checked (``SO_PEERCRED``).

Example::

    server = ControlServer(default_control_path(), private_directory=True)
    connection = server.accept()            # when the selector says so
    table.dispatch(connection, line)        # each complete line it sent
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..errors import AddressInUseError, ControlError, ListenError
from ..sockets.addresses import Bind, UnixAddress
from ..sockets.credentials import peer_credentials
from ..sockets.listeners import UnixPathStamp, open_listener, remove_unix_path, stamp_unix_path
from .control_client import (
    PROTOCOL_VERSION,
    Message,
    call,
    control_directory,
    default_control_path,
    ensure_private_directory,
    error,
    progress,
    reply,
)

__all__ = [
    "MAX_LINE",
    "PROTOCOL_VERSION",
    "Command",
    "CommandTable",
    "ControlConnection",
    "ControlServer",
    "Message",
    "call",
    "control_directory",
    "default_control_path",
    "ensure_private_directory",
    "error",
    "progress",
    "reply",
]

MAX_LINE = 65536


class ControlConnection:
    """One accepted client: non-blocking, with the peer's pid and uid.

    ``waiting`` counts the answers the manager still owes it (a reload, a stop,
    an upgrade); such a client is not idle. Whoever watches the connection (see
    :class:`~gapless.run.clients.Clients`) sets :meth:`on_close`, so that every
    way it ends, a failed send included, goes through the one :meth:`close`.
    """

    def __init__(self, sock: socket.socket, pid: int, uid: int) -> None:
        self._sock = sock
        self.pid = pid
        self.uid = uid
        self.waiting = 0
        self._buffer = b""
        self._on_close: Callable[[ControlConnection], None] | None = None

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        return self._sock.fileno() == -1

    def on_close(self, callback: Callable[[ControlConnection], None]) -> None:
        """Call ``callback`` once, just before the socket is closed (while its fd is
        still valid, so that it can be unregistered from a selector)."""
        self._on_close = callback

    def read_lines(self) -> list[bytes] | None:
        """The complete lines received so far; None once the peer has gone."""
        try:
            data = self._sock.recv(MAX_LINE)
        except BlockingIOError:
            return []
        except OSError:
            return None
        if not data:
            return None
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        if len(self._buffer) > MAX_LINE:
            self.send(error(f"request longer than {MAX_LINE} bytes; send one JSON object a line"))
            return None
        return [line for line in lines if line.strip()]

    def send(self, message: Message) -> bool:
        """Send one line; a client too slow to take it is closed (False)."""
        if self.closed:
            return False
        data = json.dumps(message).encode() + b"\n"
        try:
            while data:
                data = data[self._sock.send(data) :]
        except OSError:
            self.close()
            return False
        return True

    def close(self) -> None:
        """Close the connection, telling its watcher first. Idempotent."""
        if self.closed:
            return
        callback, self._on_close = self._on_close, None
        if callback is not None:
            callback(self)
        self._sock.close()


class ControlServer:
    """The listening control socket: 0600, peers checked by uid.

    Args:
        path: where to bind.
        private_directory: create the parent as a 0700 directory (the default path).

    Raises:
        ControlError: another manager holds the path, or it cannot be bound.
    """

    def __init__(self, path: str, *, private_directory: bool = False) -> None:
        if private_directory:
            ensure_private_directory(os.path.dirname(path))
        try:
            self._sock = open_listener(Bind(UnixAddress(path)), backlog=64, mode=0o600)
        except AddressInUseError:
            raise ControlError(
                f"another gapless manager listens on {path!r}; stop it, "
                "or pass --control PATH to run a second one"
            ) from None
        except ListenError as exc:
            raise ControlError(f"cannot open the control socket: {exc}") from None
        self._stamp = stamp_unix_path(self._sock)
        self._sock.setblocking(False)
        self.path = path
        self._spare = os.dup(self._sock.fileno())  # see _refuse_for_lack_of_fds

    @classmethod
    def adopt(cls, fd: int, path: str, stamp: UnixPathStamp | None) -> ControlServer:
        """Wrap the control socket a manager kept across its own exec."""
        server = cls.__new__(cls)
        server._sock = socket.socket(fileno=fd)
        os.set_inheritable(fd, False)
        server._sock.setblocking(False)
        server._stamp = stamp
        server.path = path
        server._spare = os.dup(fd)
        return server

    @property
    def stamp(self) -> UnixPathStamp | None:
        return self._stamp

    def own_path(self, owned: bool) -> None:
        """Whether :meth:`close` removes the path: not while another manager may use
        the socket (a handoff, see gapless.sockets.handoff), again once it passed to this one."""
        self._stamp = stamp_unix_path(self._sock) if owned else None

    def fileno(self) -> int:
        return self._sock.fileno()

    def accept(self) -> ControlConnection | None:
        """Accept one client; None if there was none or it was refused."""
        try:
            sock, _ = self._sock.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return None
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            self._refuse_for_lack_of_fds()
            return None
        sock.setblocking(False)
        pid, uid, _ = peer_credentials(sock)
        connection = ControlConnection(sock, pid, uid)
        if uid not in (0, os.getuid()):
            connection.send(
                error(
                    f"permission denied: uid {uid} may not control a manager of uid {os.getuid()}"
                )
            )
            connection.close()
            return None
        return connection

    def _refuse_for_lack_of_fds(self) -> None:
        """Out of fds, a pending client would keep the socket readable and the loop
        spinning: free the spare fd to accept it, tell it why, and take the fd back."""
        os.close(self._spare)
        try:
            with contextlib.suppress(OSError):
                sock, _ = self._sock.accept()
                with sock:
                    sock.setblocking(False)
                    message = error(
                        "the manager is out of file descriptors; raise its RLIMIT_NOFILE "
                        "(prlimit --nofile, LimitNOFILE=) or wait for connections to close"
                    )
                    sock.send(json.dumps(message).encode() + b"\n")
        finally:
            self._spare = os.dup(self._sock.fileno())

    def close(self) -> None:
        """Close the socket and remove its file if it is still ours."""
        if self._sock.fileno() != -1:
            self._sock.close()
            os.close(self._spare)
            remove_unix_path(self._stamp)


Handler = Callable[[ControlConnection, Message], None]
#: Checks one request field's value: the one-line problem with it, or None.
FieldCheck = Callable[[object], str | None]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    handler: Handler
    fields: Mapping[str, FieldCheck] = field(default_factory=dict)


class CommandTable:
    """Commands by name, each with its help and the fields it takes; ``help`` itself
    is built in.

    A field a command declares is checked before its handler runs, so a handler
    only sees values of the right type and form; fields no command declares are
    ignored (a newer client may send more).
    """

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}
        self.register("help", "list the commands and what they do", self._help)

    def register(
        self, name: str, help: str, handler: Handler, fields: Mapping[str, FieldCheck] | None = None
    ) -> None:
        self._commands[name] = Command(name, help, handler, dict(fields or {}))

    def describe(self) -> dict[str, str]:
        return {name: command.help for name, command in sorted(self._commands.items())}

    def dispatch(self, connection: ControlConnection, line: bytes) -> None:
        """Parse one request line and run its command; a bad one gets an error reply.

        Raises:
            Exception: whatever the handler raised (a bug): the caller answers and
                drops this client alone (see gapless.run.clients).
        """
        try:
            request = _parse_request(line)
            command = self._commands.get(request["cmd"])
            if command is None:
                known = ", ".join(sorted(self._commands))
                raise ControlError(f"unknown command {request['cmd']!r}; known: {known}")
            for name, check in command.fields.items():
                problem = check(request[name]) if name in request else None
                if problem is not None:
                    raise ControlError(problem)
        except ControlError as exc:
            connection.send(error(str(exc)))
            return
        command.handler(connection, request)

    def _help(self, connection: ControlConnection, request: Message) -> None:
        connection.send(reply(True, commands=self.describe()))


def _parse_request(line: bytes) -> Message:
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):  # e.g. 60,000 nested '['
        raise ControlError(f"request {line[:60]!r} is not JSON; send one object a line") from None
    if not isinstance(request, dict):
        raise ControlError('a request must be a JSON object like {"v": 1, "cmd": "status"}')
    version = request.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # not True, not 1.0
        raise ControlError(
            f"unsupported protocol version {version!r}; this manager speaks "
            f"{PROTOCOL_VERSION}: upgrade the client or the manager"
        )
    if not isinstance(request.get("cmd"), str):
        raise ControlError('a request needs "cmd", e.g. {"v": 1, "cmd": "status"}')
    return request
