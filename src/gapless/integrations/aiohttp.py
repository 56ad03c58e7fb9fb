"""aiohttp applications (``aiohttp.web.Application``), with a drain that loses nothing.

aiohttp's own shutdown (``AppRunner.cleanup()``) closes every idle keep-alive
connection at once while its client may be sending on it, and its keep-alive
expiry closes a connection without looking whether a request just arrived.
This module keeps aiohttp's runner, protocol and signals, and replaces the
drain (see :mod:`gapless.integrations` for the contract):

* the listeners close without dropping accepted connections;
* a response prepared during the drain says ``Connection: close`` (an
  ``on_response_prepare`` handler calls ``force_close()``), and aiohttp closes
  the connection once it is sent;
* idle connections expire only at keep-alive expiry, as in steady state, and
  :class:`DrainingRequestHandler` first checks the receive queue;
* the application finds an :class:`asyncio.Event` set when the drain starts in
  ``app[DRAIN_KEY]``, to tell its WebSocket clients; after ``ws_grace`` the
  WebSockets still open are closed with code 1012;
* once every connection ended (or the deadline cut them, counted in the log)
  ``AppRunner.cleanup()`` runs ``on_shutdown`` and ``on_cleanup``;
* the head limits of :mod:`.limits`, which aiohttp lacks: a head must arrive
  within ``read_timeout`` (408), and may not take more than
  ``max_header_size`` bytes in all (431; aiohttp only caps each line).

aiohttp internals relied on (tested with 3.14): ``AppRunner._make_server``,
``web_server.Server`` (``request_handler``, ``request_factory``,
``handler_cancellation``, ``_kwargs``, ``connection_lost``) and the keep-alive
fields of ``web_protocol.RequestHandler`` (``_process_keepalive``,
``_keepalive_handle``, ``_next_keepalive_close_time``, ``_keepalive_timeout``).

Example::

    report = serve_aiohttp(app, sockets, ServeOptions(), on_ready=gapless.ready)
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ServeError
from .aiohttp_handler import DrainingRequestHandler, head_limit
from .common import (
    SERVICE_RESTART,
    DrainFlag,
    DrainReport,
    ServeOptions,
    listen_backlog,
)
from .drain import StopRequest, handshaking, log_report, stop_accepting

try:
    from aiohttp import web
    from aiohttp.web_protocol import RequestHandler
    from aiohttp.web_server import Server
except ImportError:  # pragma: no cover - the message names the fix
    raise ServeError("an aiohttp application needs aiohttp: pip install aiohttp") from None

__all__ = ["DRAIN_KEY", "DrainingRequestHandler", "serve_aiohttp"]

logger = logging.getLogger("gapless.serve")

#: ``app[DRAIN_KEY]``: an :class:`asyncio.Event` set when the drain starts.
DRAIN_KEY = web.AppKey("gapless.drain", asyncio.Event)


class _DrainingServer(Server):
    """aiohttp's server making :class:`DrainingRequestHandler` connections, with an
    event set each time one ends (the drain waits on it, not on a timer)."""

    read_timeout: float | None = None
    max_header_size = 16384

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changed = asyncio.Event()

    def __call__(self) -> RequestHandler:
        handler = DrainingRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.read_timeout = self.read_timeout
        handler.max_header_size = self.max_header_size
        return handler

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        task = handler._task_handler
        if task is not None and not task.done():
            task.add_done_callback(lambda _: self.changed.set())  # after the server's own
        else:
            self.changed.set()


class _Runner(web.AppRunner):
    options = ServeOptions()

    async def _make_server(self) -> Server:
        made = await super()._make_server()
        server = _DrainingServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **made._kwargs,
        )
        server.read_timeout = self.options.read_timeout
        server.max_header_size = self.options.max_header_size
        return server


def serve_aiohttp(
    app: object,
    sockets: Sequence[socket.socket],
    options: ServeOptions,
    *,
    on_ready: Callable[[], object] | None = None,
    on_drain: Callable[[], object] | None = None,
) -> DrainReport:
    """Serve an aiohttp ``app`` on ``sockets`` until SIGTERM or SIGINT, then drain.

    Args:
        app: an ``aiohttp.web.Application``, not yet started.
        sockets: listening sockets, served all at once and closed (never shut down).
        options: ``keep_alive``, ``max_header_size``, ``drain_timeout``,
            ``ws_grace``, ``access_log``, ``certfile`` and ``keyfile`` apply.
        on_ready: called once ``on_startup`` completed and every socket is served.
        on_drain: called once the listeners are closed and the drain began.

    Returns:
        How the drain ended.

    Raises:
        ServeError: ``app`` is not an aiohttp application.
    """
    if not isinstance(app, web.Application):
        raise ServeError(f"{app!r} is not an aiohttp.web.Application: use --interface asgi")
    _log_to_stderr(options.log_level)
    return asyncio.run(_Worker(app, options).run(sockets, on_ready, on_drain))


def _log_to_stderr(level: str) -> None:
    """aiohttp logs (the access log too) to its ``aiohttp.*`` loggers, which
    have no handler: without this, ``access_log`` and ``log_level`` did nothing."""
    root = logging.getLogger("aiohttp")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-8s aiohttp[%(process)d]: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


class _Worker:
    def __init__(self, app: web.Application, options: ServeOptions) -> None:
        self.app = app
        self.options = options
        self.flag = DrainFlag()
        self.websockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self.stop = StopRequest()
        app[DRAIN_KEY] = self.flag.event
        app.on_response_prepare.append(self._on_prepare)
        app.middlewares.insert(0, head_limit(options.max_header_size))

    async def _on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        if isinstance(response, web.WebSocketResponse):
            self.websockets.add(response)
        elif self.flag.started:
            # aiohttp closes the connection after this response; say so. The header is
            # set too: aiohttp 3.10+ computes it before this hook runs.
            response.force_close()
            response.headers["Connection"] = "close"

    async def run(
        self,
        sockets: Sequence[socket.socket],
        on_ready: Callable[[], object] | None,
        on_drain: Callable[[], object] | None,
    ) -> DrainReport:
        self.stop.install()
        runner = _Runner(self.app, **_runner_options(self.options))
        runner.options = self.options
        await runner.setup()  # on_startup runs here
        server = runner.server
        assert isinstance(server, _DrainingServer)
        self.stop.on_force = server.changed.set
        ssl = _ssl_context(self.options)
        sites = [
            web.SockSite(runner, sock, ssl_context=ssl, backlog=listen_backlog(sock))
            for sock in sockets
        ]
        for site in sites:
            await site.start()
        if on_ready is not None:
            on_ready()
        await self.stop.event.wait()
        servers = [site._server for site in sites if site._server is not None]
        report = await self._drain(server, servers, on_drain)  # type: ignore[arg-type]
        await runner.cleanup()  # on_shutdown, on_cleanup: no connection is left now
        return report

    async def _drain(
        self,
        server: _DrainingServer,
        servers: list[asyncio.base_events.Server],
        on_drain: Callable[[], object] | None,
    ) -> DrainReport:
        deadline = self.stop.at + self.options.drain_timeout
        self.flag.start()
        await stop_accepting(servers)
        logger.info("draining: stopped accepting; %d connections", len(server.connections))
        if on_drain is not None:
            on_drain()
        open_websockets = [ws for ws in self.websockets if not ws.closed]
        if open_websockets:
            grace = min(deadline, time.monotonic() + self.options.ws_grace)
            await _wait(server, lambda: all(ws.closed for ws in open_websockets), grace, self.stop)
            closing = [ws.close(code=SERVICE_RESTART) for ws in open_websockets if not ws.closed]
            await asyncio.gather(*closing, return_exceptions=True)

        def drained() -> bool:
            opened = len(server.connections)
            return not opened and not handshaking(servers, opened)

        await _wait(server, drained, deadline, self.stop)
        remaining = server.connections
        cut = len(remaining) + handshaking(servers, len(remaining))
        for handler in remaining:
            handler.force_close()
        report = DrainReport(time.monotonic() - self.stop.at, cut, len(remaining))
        log_report(report, "a second signal" if self.stop.force else "the deadline")
        return report


async def _wait(
    server: _DrainingServer, done: Callable[[], bool], deadline: float, stop: StopRequest
) -> None:
    while not done() and not stop.force:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        server.changed.clear()
        try:
            await asyncio.wait_for(server.changed.wait(), remaining)
        except asyncio.TimeoutError:
            return


def _runner_options(options: ServeOptions) -> dict[str, Any]:
    extra: dict[str, Any] = {} if options.access_log else {"access_log": None}
    return {
        "handle_signals": False,
        "keepalive_timeout": options.keep_alive,
        "max_line_size": options.max_header_size,
        "max_field_size": options.max_header_size,
        "shutdown_timeout": 1.0,  # only what the deadline cut is left by then
        **extra,
    }


def _ssl_context(options: ServeOptions) -> Any:
    if options.certfile is None:
        return None
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(options.certfile, options.keyfile)
    return context
