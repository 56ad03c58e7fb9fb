"""What every ``gapless serve`` integration shares: options, the drain report,
the ASGI ``Connection: close`` middleware and the receive-queue check.

Example::

    flag = DrainFlag()
    app = CloseWhenDraining(app, flag)   # responses started after flag.start() close
    ...
    if unread_bytes(fd) == 0:            # nothing arrived unseen: safe to expire
        transport.close()
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DRAIN_EXTENSION",
    "SERVICE_RESTART",
    "ASGIApp",
    "CloseWhenDraining",
    "DrainFlag",
    "DrainReport",
    "ServeOptions",
    "listen_backlog",
    "no_delay",
    "unread_bytes",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The ASGI scope extension naming the drain's :class:`asyncio.Event`.
DRAIN_EXTENSION = "gapless.drain"
#: WebSocket close code "service restart" (RFC 6455, IANA registry).
SERVICE_RESTART = 1012

_CLOSE = (b"connection", b"close")
# struct tcp_info: eight u8 fields, then u32 rto, ato, snd_mss, rcv_mss, unacked,
# sacked. On a listening socket the kernel reports its backlog in tcpi_sacked.
_TCPI_SACKED = struct.Struct("=28xI")
_MAX_BACKLOG = 65535  # listen() caps it at net.core.somaxconn, the most there is


@dataclass(frozen=True)
class ServeOptions:
    """Settings of one served application; the defaults are the servers' own.

    Attributes:
        drain_timeout: seconds from the stop signal to cutting what remains.
        keep_alive: seconds an idle keep-alive connection is kept, also in a drain.
        read_timeout: seconds a request head may take from its first byte (from
            the connection's start for a new one) before the connection is cut,
            with 408 if some of it arrived (None: no limit). See :mod:`.limits`.
        max_header_size: bytes a request head may take; above, 431.
        http: uvicorn's HTTP parser: ``auto`` (httptools if installed), ``h11``
            or ``httptools``.
        limit_concurrency: answer 503 beyond this many connections or requests.
        threads: worker threads for a WSGI application.
        access_log: log one line per request.
        log_level: ``critical``, ``error``, ``warning``, ``info`` or ``debug``.
        certfile: a PEM certificate (chain) to serve TLS, read at each start.
        keyfile: the certificate's private key.
        ws_grace: seconds a drain leaves WebSocket handlers, told through
            :data:`DRAIN_EXTENSION`, to close their connections themselves
            before the server closes the rest with code 1012.
    """

    drain_timeout: float = 30.0
    keep_alive: float = 5.0
    read_timeout: float | None = None
    max_header_size: int = 16384
    http: str = "auto"
    limit_concurrency: int | None = None
    threads: int = 10
    access_log: bool = True
    log_level: str = "info"
    certfile: str | None = None
    keyfile: str | None = None
    ws_grace: float = 1.0


@dataclass(frozen=True)
class DrainReport:
    """How a drain ended: its length and what the deadline cut, if anything."""

    seconds: float
    cut_connections: int = 0
    cut_tasks: int = 0

    @property
    def clean(self) -> bool:
        """True when every connection and request finished before the deadline."""
        return self.cut_connections == 0 and self.cut_tasks == 0


class DrainFlag:
    """Set once when a drain starts; read by middleware on every response.

    ``event`` is the same as an :class:`asyncio.Event`, for WebSocket handlers.
    """

    def __init__(self) -> None:
        self.started_at: float | None = None
        self.event = asyncio.Event()

    @property
    def started(self) -> bool:
        return self.started_at is not None

    def start(self) -> None:
        """Mark the drain as started (idempotent), on ``time.monotonic()``."""
        if self.started_at is None:
            self.started_at = time.monotonic()
            self.event.set()


class CloseWhenDraining:
    """ASGI middleware: what a drain changes in the application's view.

    * A response started during a drain says ``Connection: close``. A client
      told so opens its next request on a new connection, which the next
      generation accepts; without the header it may write that request into
      the connection as the server closes it, and lose it.
    * A WebSocket scope carries ``scope["extensions"]["gapless.drain"]
      ["started"]``, an :class:`asyncio.Event` set when the drain starts: a
      handler may wait on it to tell its client (say, to reconnect elsewhere)
      before the server closes the connection with code 1012.
    * A WebSocket handshake that arrives during a drain is refused (close code
      1012 before accept, which servers answer with HTTP 403).

    Args:
        app: the ASGI application.
        flag: the drain flag the server sets.
    """

    def __init__(self, app: ASGIApp, flag: DrainFlag) -> None:
        self.app = app
        self.flag = flag
        self._open_websockets: set[Send] = set()  # the server's send of each open one

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        if scope.get("http_version", "1.1") not in ("1.0", "1.1"):
            await self.app(scope, receive, send)  # HTTP/2 has no Connection header
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.flag.started:
                message = {**message, "headers": _with_close(message.get("headers", ()))}
            await send(message)

        await self.app(scope, receive, send_closing)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.flag.started:
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": SERVICE_RESTART})
            return
        extensions = {
            **(scope.get("extensions") or {}),
            DRAIN_EXTENSION: {"started": self.flag.event},
        }
        opened = self._open_websockets

        async def send_tracked(message: Message) -> None:
            if message["type"] == "websocket.accept":
                opened.add(send)
            elif message["type"] == "websocket.close":
                opened.discard(send)
            await send(message)

        try:
            await self.app({**scope, "extensions": extensions}, receive, send_tracked)
        finally:
            opened.discard(send)

    @property
    def has_websockets(self) -> bool:
        """True while a WebSocket accepted through this middleware is open."""
        return bool(self._open_websockets)

    async def close_websockets(self) -> int:
        """Close every WebSocket still open with code 1012, through the server's
        ASGI ``send``: for servers with no such shutdown of their own.

        Returns:
            How many were closed.
        """
        still_open = list(self._open_websockets)
        self._open_websockets.clear()
        for send in still_open:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await send({"type": "websocket.close", "code": SERVICE_RESTART})
        return len(still_open)


def _with_close(headers: Any) -> list[tuple[bytes, bytes]]:
    kept = [(name, value) for name, value in headers if name.lower() != b"connection"]
    return [*kept, _CLOSE]


def unread_bytes(fd: int) -> int:
    """Bytes waiting in a connected socket's receive queue (``FIONREAD``).

    Args:
        fd: the connection's file descriptor.

    Returns:
        The count; 0 also when the fd is no longer open (nothing to lose).
    """
    if fd < 0:  # a socket object already closed
        return 0
    count = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, count, True)
    except OSError:
        return 0
    return count[0]


def no_delay(sock: socket.socket) -> None:
    """TCP_NODELAY on a TCP listener: every connection it accepts inherits it (Linux).

    asyncio sets it on an accepted connection only when the socket's ``proto``
    is ``IPPROTO_TCP``, which a ``socket(AF_INET, SOCK_STREAM)`` is not (proto
    0). Without it a response written as head then body waits for the client's
    delayed ACK, 40 ms, on every keep-alive request.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def listen_backlog(sock: socket.socket) -> int:
    """The backlog to pass when a server calls ``listen()`` again on ``sock``.

    asyncio's ``create_server(sock=...)`` calls ``listen(backlog)`` on the socket
    it is given, which changes the queue of every process sharing it. This keeps
    the backlog the socket already has (TCP reports it in ``TCP_INFO``);
    otherwise the largest the kernel allows.

    Args:
        sock: an inherited listening socket.

    Returns:
        The backlog to pass.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_SACKED.size)
        except OSError:
            return _MAX_BACKLOG
        if len(info) >= _TCPI_SACKED.size:
            backlog: int = _TCPI_SACKED.unpack_from(info)[0]
            return backlog or _MAX_BACKLOG
    return _MAX_BACKLOG
