"""hypercorn (ASGI over HTTP/1.1), with a drain that loses nothing.

hypercorn's own shutdown sets its ``terminated`` event before it closes the
listeners; from then on every idle keep-alive connection is closed at once
(``_idle_timeout`` waits on that event) and every response ends the connection
(``_maybe_recycle``), both without ``Connection: close``: a client writing its
next request meanwhile loses it. Its graceful timeout is ignored on Python
>= 3.12.1. So this module keeps hypercorn's protocols, lifespan and TLS, and
runs its own worker loop instead of ``worker_serve`` (see
:mod:`gapless.integrations` for the contract):

* ``terminated`` is never set. Responses started during the drain say
  ``Connection: close`` (:class:`~.common.CloseWhenDraining`), so h11 ends each
  connection after that response, the way the client was told;
* :class:`DrainingTCPServer` expires an idle connection only at keep-alive
  expiry, as in steady state, and only if its receive queue is empty;
* WebSocket handlers are told the drain started, get ``ws_grace`` seconds, and
  the rest are closed with code 1012 through ASGI;
* the listeners close without dropping accepted connections, the deadline cuts
  what remains, and the count is logged;
* a request head must arrive within ``read_timeout`` (:mod:`.limits`: 408),
  in place of hypercorn's own ``read_timeout``, which closes any connection
  silent that long: idle keep-alive ones too, racing with a client sending on
  them, and ones waiting on a slow response;
* TLS offers HTTP/1.1 only (ALPN): HTTP/2 would need a drain of its own
  (GOAWAY, then the streams in flight), not written yet. A cleartext client
  speaking HTTP/2 with prior knowledge is served, without that drain.

hypercorn internals relied on (tested with 0.18.0): ``hypercorn.asyncio.tcp_server.
TCPServer`` (its constructor, ``writer``, ``config``, ``_initiate_server_close``
and the ``_idle_timeout`` it restarts), ``asyncio.lifespan.Lifespan``,
``asyncio.worker_context.WorkerContext`` and ``app_wrappers.ASGIWrapper``.

Example::

    report = serve_hypercorn(app, sockets, ServeOptions(), on_ready=gapless.ready)
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Sequence
from ssl import SSLError
from typing import Any

from ..errors import ServeError
from .common import (
    ASGIApp,
    CloseWhenDraining,
    DrainFlag,
    DrainReport,
    ServeOptions,
    listen_backlog,
    unread_bytes,
)
from .drain import StopRequest, Tracked, handshaking, log_report, stop_accepting
from .limits import HeadDeadline, HeadSizeLimit, error_response

try:
    from hypercorn.app_wrappers import ASGIWrapper
    from hypercorn.asyncio.lifespan import Lifespan
    from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
    from hypercorn.asyncio.worker_context import WorkerContext
    from hypercorn.config import Config
    from hypercorn.events import Closed, Event, RawData, Updated
except ImportError:  # pragma: no cover - the message names the fix
    raise ServeError("--server hypercorn needs hypercorn: pip install hypercorn") from None

__all__ = ["DrainingTCPServer", "serve_hypercorn"]

logger = logging.getLogger("gapless.serve")

_LIFESPAN_MIN = 1.0  # lifespan shutdown runs even when the drain used the deadline


class DrainingTCPServer(TCPServer):
    """hypercorn's connection, whose idle expiry never closes on a waiting request,
    and whose request heads must arrive within ``head_timeout``."""

    head_timeout: float | None = None
    _awaiting_head = True  # until hypercorn reports a request began (not idle)
    _head_bytes = 0

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated):
            self._awaiting_head = event.idle
            if not event.idle:
                self._deadline.stop()  # the head is complete
                self._head_bytes = 0
        await super().protocol_send(event)

    async def _idle_timeout(self) -> None:
        sock = self.writer.get_extra_info("socket")
        while True:
            await asyncio.sleep(self.config.keep_alive_timeout)  # the keep-alive timer
            if sock is None or unread_bytes(sock.fileno()) == 0:
                break
            # A request arrived unseen: the reader takes it next, which stops this timer.
        await asyncio.shield(self._initiate_server_close())

    async def _read_data(self) -> None:
        # hypercorn's loop, with the head deadline in place of its read timeout.
        self._deadline = HeadDeadline(self.loop, self.head_timeout, self._head_expired)
        self._deadline.start()  # a new connection owes its first head within the time
        while not self.reader.at_eof():
            try:
                data = await self.reader.read(MAX_RECV)
            except (ConnectionError, OSError, SSLError):
                break
            awaiting = self._awaiting_head
            await self.protocol.handle(RawData(data))
            if awaiting and self._awaiting_head and data:
                self._head_bytes += len(data)
                self._deadline.start()
        self._deadline.stop()
        await self.protocol.handle(Closed())
        # The client closed: nothing to expire. hypercorn would keep the timer, and
        # the connection's task with it, until the keep-alive time ran out.
        await self.idle_task.stop()

    def _head_expired(self, received: int) -> None:
        if not self._awaiting_head or self.writer.is_closing():
            return
        if self._head_bytes:
            self.writer.write(error_response(408))
        self.writer.close()


def serve_hypercorn(
    app: ASGIApp,
    sockets: Sequence[socket.socket],
    options: ServeOptions,
    *,
    on_ready: Callable[[], object] | None = None,
    on_drain: Callable[[], object] | None = None,
) -> DrainReport:
    """Serve ``app`` with hypercorn on ``sockets`` until SIGTERM or SIGINT, then drain.

    Args:
        app: an ASGI 3 application.
        sockets: listening sockets, served all at once and closed (never shut down).
        options: the settings.
        on_ready: called once the lifespan startup completed and every socket is served.
        on_drain: called once the listeners are closed and the drain began.

    Returns:
        How the drain ended.

    Raises:
        ServeError: the lifespan startup failed.
    """
    worker = _Worker(app, sockets, options)
    return asyncio.run(worker.run(on_ready, on_drain))


class _Worker:
    def __init__(
        self, app: ASGIApp, sockets: Sequence[socket.socket], options: ServeOptions
    ) -> None:
        self.flag = DrainFlag()
        limited = HeadSizeLimit(app, options.max_header_size)
        self.middleware = CloseWhenDraining(limited, self.flag)
        self.app = ASGIWrapper(self.middleware)  # type: ignore[arg-type]  # ASGI, loosely typed
        self.sockets = sockets
        self.options = options
        self.config = _config(options)
        self.connections: Tracked[asyncio.Task[Any]] = Tracked()
        self.stop = StopRequest()
        self.stop.on_force = self.connections.changed.set

    async def run(
        self, on_ready: Callable[[], object] | None, on_drain: Callable[[], object] | None
    ) -> DrainReport:
        loop = asyncio.get_running_loop()
        self.stop.install()
        state: dict[str, Any] = {}
        lifespan = Lifespan(self.app, self.config, loop, state)
        lifespan_task = loop.create_task(lifespan.handle_lifespan())
        await lifespan.wait_for_startup()
        if lifespan_task.done() and lifespan_task.exception() is not None:
            raise ServeError(f"the application's startup failed: {lifespan_task.exception()}")
        servers = await self._start_servers(state)
        if on_ready is not None:
            on_ready()
        await self.stop.event.wait()
        report = await self._drain(servers, on_drain)
        if not self.stop.force:
            deadline = self.stop.at + self.options.drain_timeout
            budget = max(deadline - time.monotonic(), _LIFESPAN_MIN)
            try:
                await asyncio.wait_for(lifespan.wait_for_shutdown(), budget)
            except (asyncio.TimeoutError, Exception) as exc:
                logger.warning("lifespan shutdown did not complete: %r; going on", exc)
        lifespan_task.cancel()
        return report

    async def _start_servers(self, state: dict[str, Any]) -> list[asyncio.base_events.Server]:
        loop = asyncio.get_running_loop()
        context = WorkerContext(None)
        ssl = self.config.create_ssl_context() if self.config.ssl_enabled else None
        handshake = self.config.ssl_handshake_timeout if ssl else None

        class Connection(DrainingTCPServer):
            head_timeout = self.options.read_timeout

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.connections.add(task)
            try:
                await Connection(self.app, loop, self.config, context, state, reader, writer)
            finally:
                self.connections.discard(task)

        servers = []
        for sock in self.sockets:
            server = await asyncio.start_server(
                on_connection,
                sock=sock,
                backlog=listen_backlog(sock),
                ssl=ssl,
                ssl_handshake_timeout=handshake,
            )
            servers.append(server)
        return servers

    async def _drain(
        self, servers: list[asyncio.base_events.Server], on_drain: Callable[[], object] | None
    ) -> DrainReport:
        deadline = self.stop.at + self.options.drain_timeout
        self.flag.start()
        await stop_accepting(servers)
        tracked = self.connections
        logger.info("draining: stopped accepting; %d connections", len(tracked.items))
        if on_drain is not None:
            on_drain()
        stop = self.stop.forced
        grace = min(deadline, time.monotonic() + self.options.ws_grace)
        if self.middleware.has_websockets:
            await tracked.wait_until(lambda: not self.middleware.has_websockets, grace, stop)
            await self.middleware.close_websockets()

        def drained() -> bool:
            return not tracked.items and not handshaking(servers, len(tracked.items))

        await tracked.wait_until(drained, deadline, stop)
        remaining = [task for task in tracked.items if not task.done()]
        cut = len(remaining) + handshaking(servers, len(tracked.items))
        for task in remaining:
            task.cancel()
        if remaining:
            await asyncio.wait(remaining, timeout=1.0)
        report = DrainReport(time.monotonic() - self.stop.at, cut, len(remaining))
        log_report(report, "a second signal" if self.stop.force else "the deadline")
        return report


def _config(options: ServeOptions) -> Config:
    config = Config()
    config.keep_alive_timeout = options.keep_alive
    config.read_timeout = None  # DrainingTCPServer's head deadline instead
    config.h11_max_incomplete_size = options.max_header_size
    config.certfile = options.certfile
    config.keyfile = options.keyfile
    # HTTP/2 would need a drain of its own (GOAWAY, then the streams in flight):
    # offer HTTP/1.1 only over TLS, where the contract holds.
    config.alpn_protocols = ["http/1.1"]
    config.accesslog = "-" if options.access_log else None
    config.loglevel = options.log_level.upper()
    config.graceful_timeout = 0  # unused: the drain above has its own deadline
    return config
