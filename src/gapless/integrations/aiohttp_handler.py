"""aiohttp's connection with the drain's keep-alive rule and the head limits
(:mod:`.limits`), and the middleware that caps a whole head: the pieces of
:mod:`.aiohttp` that live inside aiohttp's protocol.

Example::

    app.middlewares.insert(0, head_limit(16384))
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .common import unread_bytes
from .limits import HeadDeadline, error_response, head_size

__all__ = ["DrainingRequestHandler", "head_limit"]


class DrainingRequestHandler(RequestHandler):
    """aiohttp's connection, whose keep-alive expiry never closes on a waiting
    request, and whose request heads are held to the limits."""

    read_timeout: float | None = None
    max_header_size = 16384
    _deadline: HeadDeadline
    _payload: Any = None  # the body of the last request, while it is received
    _head_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._deadline = HeadDeadline(self._loop, self.read_timeout, self._head_expired)
        self._deadline.start()  # a new connection owes its first head within the time
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._deadline.stop()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        count, in_head = self._request_count, self._in_head()
        super().data_received(data)
        if self._request_count != count:  # a head completed
            self._deadline.stop()
            self._head_bytes = 0
            self._payload = self._messages[-1][1] if self._messages else None
        elif self._in_head() and self.transport is not None:
            self._head_bytes = self._head_bytes + len(data) if in_head else 0
            self._deadline.start()
            if self._head_bytes > self.max_header_size:
                self._refuse(431)

    def _in_head(self) -> bool:
        return self._payload is None or self._payload.is_eof()

    def _head_expired(self, received: int) -> None:
        if self.transport is None or not self._in_head():
            return
        if self._waiter is None or self._waiter.done():  # busy answering: look again later
            self._deadline.restart_later()
            return
        if self._head_bytes or self._request_count:
            self._refuse(408)
        else:
            self.force_close()

    def _refuse(self, status: int) -> None:
        self._deadline.stop()
        if self.transport is not None:
            self.transport.write(error_response(status))
        self.force_close()

    def _process_keepalive(self) -> None:
        transport = self.transport
        sock = None if transport is None else transport.get_extra_info("socket")
        if sock is not None and not self._force_close and unread_bytes(sock.fileno()) > 0:
            # A request arrived unseen: let the loop read it; expire only after it.
            loop = asyncio.get_running_loop()
            self._next_keepalive_close_time = loop.time() + self._keepalive_timeout
            self._keepalive_handle = loop.call_at(
                self._next_keepalive_close_time, self._process_keepalive
            )
            return
        super()._process_keepalive()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def head_limit(max_size: int) -> Any:
    """Middleware: 431 for a head above ``max_size`` that arrived whole (the
    handler bounds one still arriving); aiohttp itself only caps each line."""

    @web.middleware
    async def limit_head(request: web.Request, handler: Handler) -> web.StreamResponse:
        size = head_size(request.method.encode(), request.raw_path.encode(), request.raw_headers)
        if size > max_size:
            response = web.Response(status=431, text="Request Header Fields Too Large")
            response.force_close()
            return response
        return await handler(request)

    return limit_head
