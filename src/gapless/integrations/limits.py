"""The limits on a request head that every ``gapless serve`` server keeps alike.

A slow or hostile client must not hold a connection, or the memory of a parser,
as long as it likes:

* ``--read-timeout S``: a request head must arrive whole within S seconds of
  its first byte, or of the connection's start for a new connection. Past that
  the connection is cut: with ``408 Request Timeout`` when some of the head
  arrived (nothing was answered on it yet), with a plain close when nothing
  did, as keep-alive expiry closes. An idle keep-alive connection is the
  keep-alive time's business, never this one's.
* ``--max-header-size B``: a head (request line and header lines) larger than
  B bytes gets ``431 Request Header Fields Too Large`` and the connection is
  closed; a head still incomplete past B is refused the same way, so no parser
  buffers more than B (and one read) of it.

The servers' parsers know when a head starts and ends; each integration tells
a :class:`HeadDeadline` and checks :func:`head_size`. Complete heads of ASGI
applications are checked once for every server by :class:`HeadSizeLimit`.

Example::

    deadline = HeadDeadline(loop, 10.0, on_expiry=cut)
    deadline.start()        # a head began (or a connection opened)
    deadline.stop()         # the head is complete: the timer is cancelled
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from .common import ASGIApp, Receive, Scope, Send

__all__ = ["HeadDeadline", "HeadSizeLimit", "error_response", "head_size"]

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
_LINE_OVERHEAD = 4  # ": " and CRLF around a header's name and value
_REQUEST_LINE_OVERHEAD = len(b"  HTTP/1.1\r\n\r\n")


def error_response(status: int) -> bytes:
    """A complete HTTP/1.1 response of ``status`` (408 or 431) that closes the
    connection: written as is, by a server that has no request to answer."""
    reason = _REASONS[status]
    return b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n" % (
        status,
        reason,
    ) + b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(reason), reason)


def head_size(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The bytes of a request head as sent, near enough: request line and headers."""
    size = len(method) + len(target) + _REQUEST_LINE_OVERHEAD
    return size + sum(len(name) + len(value) + _LINE_OVERHEAD for name, value in headers)


class HeadDeadline:
    """The timer of one connection's ``--read-timeout``.

    Args:
        loop: the connection's event loop.
        timeout: seconds a head may take; None disables the deadline.
        on_expiry: called once the time ran out with the head still incomplete;
            it gets the count of head bytes received (0: nothing was asked).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float | None,
        on_expiry: Callable[[int], object],
    ) -> None:
        self._loop = loop
        self._timeout = timeout
        self._on_expiry = on_expiry
        self._timer: asyncio.TimerHandle | None = None
        self.received = 0  # bytes of the head so far

    @property
    def running(self) -> bool:
        return self._timer is not None

    def start(self) -> None:
        """A head began: start the clock, unless it runs already."""
        if self._timeout is not None and self._timer is None:
            self.received = 0
            self._timer = self._loop.call_later(self._timeout, self._expire)

    def stop(self) -> None:
        """The head is complete (or the connection ends): no deadline until the next."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.received = 0

    def restart_later(self) -> None:
        """Look again one timeout from now (the server is busy answering)."""
        self.stop()
        self.start()

    def _expire(self) -> None:
        self._timer = None
        self._on_expiry(self.received)


class HeadSizeLimit:
    """ASGI middleware: a request whose head is above ``max_size`` bytes gets 431
    and ``Connection: close`` instead of reaching the application.

    The servers' parsers bound a head still being received; a head that arrives
    whole in one read is only seen complete, here, for every server alike.
    """

    def __init__(self, app: ASGIApp, max_size: int) -> None:
        self.app = app
        self.max_size = max_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _scope_head_size(scope) > self.max_size:
            reason = _REASONS[431]
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(reason)),
                (b"connection", b"close"),
            ]
            await send({"type": "http.response.start", "status": 431, "headers": headers})
            await send({"type": "http.response.body", "body": reason})
            return
        await self.app(scope, receive, send)


def _scope_head_size(scope: Scope) -> int:
    target: Any = scope.get("raw_path") or scope.get("path", "").encode()
    query = scope.get("query_string") or b""
    if query:
        target += b"?" + query
    return head_size(scope.get("method", "GET").encode(), target, scope.get("headers", ()))
