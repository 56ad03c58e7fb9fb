"""uvicorn, with a drain that loses nothing.

uvicorn's own SIGTERM path closes every idle keep-alive connection at once and
every connection accepted but not yet read, while their clients may be sending
on them, and it ends the response in flight on a busy connection without
``Connection: close``, so the client reuses a connection that is closing. Each
of those loses a request. This module keeps uvicorn's parsers, protocols and
lifespan handling and replaces the drain (see :mod:`gapless.integrations` for
the contract):

* :meth:`DrainingServer.shutdown` closes the listeners without dropping the
  connections asyncio accepted but has not yet given a protocol (a plain
  ``Server.close()`` resets those, see :func:`_stop_accepting`), lets every
  connection run to its next response (marked ``Connection: close`` by
  :class:`~.common.CloseWhenDraining`, or, for a request httptools received
  before the drain, by ``HttpToolsHeads.start_drain``), waits on events (no polling) until the
  connections and requests are done, and cuts what remains at the deadline,
  logging the count;
* idle connections expire as in steady state, and the HTTP protocols' expiry
  first checks the receive queue, so a request that arrived unseen is answered
  (:mod:`.uvicorn_http`);
* WebSocket handlers are told the drain started and get ``ws_grace`` seconds
  to close by themselves; the rest get close code 1012;
* signals go through the event loop: the first TERM or INT drains, the next one
  cuts at once, and the process exits normally instead of re-raising the signal.

uvicorn internals relied on, hence the pin ``uvicorn>=0.30,<0.55`` in the
``serve`` extra (tested with 0.30.0 and 0.54.0): ``Server.run(sockets=)``,
``startup()``, ``main_loop()``, ``on_tick()``, ``shutdown()``,
``capture_signals()`` (0.29+), ``servers``, ``lifespan``, ``server_state`` with
``connections`` and ``tasks`` (mutated only through ``add``/``discard``); the
HTTP protocols' ``transport``, ``loop``, ``cycle``, ``timeout_keep_alive``,
``timeout_keep_alive_task`` and ``timeout_keep_alive_handler()``; the
httptools protocol's ``scope`` (made at a message's beginning, given its
``method`` when the head is complete), ``url``, ``headers``, ``pipeline`` and
``on_headers_complete()``, its cycles' ``response_started`` and
``default_headers``; the WebSocket protocols' ``shutdown()``, which sends
close code 1012.

Per request outside a drain, with httptools, gapless adds two protocol calls
to what uvicorn does and no ASGI middleware (issue 12).

Example::

    report = serve_asgi(app, sockets, ServeOptions(), on_ready=gapless.ready)
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import signal
import socket
import time
from collections.abc import Callable, Generator, Sequence

import uvicorn
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from .common import (
    ASGIApp,
    CloseWhenDraining,
    DrainFlag,
    DrainReport,
    ServeOptions,
    listen_backlog,
)
from .drain import handshaking, log_report, stop_accepting
from .limits import HeadSizeLimit
from .uvicorn_http import DrainingHttp, DrainState, http_protocol

__all__ = ["DrainingServer", "serve_asgi"]

logger = logging.getLogger("gapless.serve")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_DATE_REFRESH = 1.0  # uvicorn refreshes its Date header once a second
_CANCEL_GRACE = 1.0  # for cancelled requests to unwind after the deadline
_LIFESPAN_MIN = 1.0  # lifespan shutdown runs even when the drain used the deadline


def serve_asgi(
    app: ASGIApp,
    sockets: Sequence[socket.socket],
    options: ServeOptions,
    *,
    on_ready: Callable[[], object] | None = None,
    on_drain: Callable[[], object] | None = None,
) -> DrainReport:
    """Serve ``app`` on ``sockets`` until SIGTERM or SIGINT, then drain.

    Args:
        app: an ASGI 3 application.
        sockets: listening sockets, e.g. inherited ones; served all at once and
            closed (never shut down) when the drain starts.
        options: the settings.
        on_ready: called once the lifespan startup completed and every socket is
            being served, e.g. to send ``READY=1``.
        on_drain: called once the listeners are closed and the drain began,
            e.g. to send ``STOPPING=1``.

    Returns:
        How the drain ended.

    Raises:
        ServeError: an unknown or missing HTTP parser.
        SystemExit: uvicorn's own exit with code 3 when the lifespan startup failed.
    """
    flag = DrainFlag()
    guarded = CloseWhenDraining(HeadSizeLimit(app, options.max_header_size), flag)
    protocol = http_protocol(
        options.http, read_timeout=options.read_timeout, max_header_size=options.max_header_size
    )
    config = uvicorn.Config(
        guarded,
        interface="asgi3",
        http=protocol,
        loop="asyncio",  # the drain relies on the selector loop's accept path
        timeout_keep_alive=options.keep_alive,  # type: ignore[arg-type]  # a float works
        limit_concurrency=options.limit_concurrency,
        h11_max_incomplete_event_size=options.max_header_size,
        backlog=max((listen_backlog(sock) for sock in sockets), default=2048),
        access_log=options.access_log,
        log_level=options.log_level,
        ssl_certfile=options.certfile,
        ssl_keyfile=options.keyfile,
    )
    config.load()
    if protocol.picks_app:
        protocol.fast_app = _bare(config.loaded_app, guarded, app)
    server = DrainingServer(config, flag, options, on_ready=on_ready, on_drain=on_drain)
    server.run(sockets=list(sockets))
    return server.report or DrainReport(0.0)


def _bare(loaded: object, guarded: ASGIApp, app: ASGIApp) -> object | None:
    """uvicorn's wrapping of ``guarded`` (``loaded``) around ``app`` instead:
    what an unguarded request goes to. None when uvicorn wrapped it otherwise
    than in its proxy-headers middleware (e.g. its message logger at trace
    level): every request then goes through ``loaded``."""
    if loaded is guarded:
        return app
    if isinstance(loaded, ProxyHeadersMiddleware) and loaded.app is guarded:
        bare = copy.copy(loaded)
        bare.app = app  # type: ignore[assignment]  # uvicorn's own ASGI types
        return bare
    return None


class DrainingServer(uvicorn.Server):
    """uvicorn's server with gapless's drain, readiness callback and signals.

    Args:
        config: uvicorn's configuration; its app should be wrapped in
            :class:`~.common.CloseWhenDraining` with ``flag``.
        flag: set when the drain starts.
        options: ``drain_timeout`` and ``ws_grace`` are read.
        on_ready: called once every socket is being served.
        on_drain: called once the listeners are closed and the drain began.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        flag: DrainFlag,
        options: ServeOptions,
        *,
        on_ready: Callable[[], object] | None = None,
        on_drain: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(config)
        self.server_state: DrainState = DrainState(flag)
        self.report: DrainReport | None = None
        self._options = options
        self._on_ready = on_ready
        self._on_drain = on_drain
        self._stop = asyncio.Event()
        self._stop_requested_at: float | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self.request_stop)
        try:
            yield
        finally:
            for sig in _STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    def request_stop(self) -> None:
        """Start the drain; called a second time, cut what remains at once."""
        if self.should_exit:
            self.force_exit = True
        else:
            self.should_exit = True
            self._stop_requested_at = time.monotonic()
        self._stop.set()
        self.server_state.changed.set()

    async def main_loop(self) -> None:
        for server in self.servers:
            await server.start_serving()  # idempotent; returns once accepts are registered
        if self._on_ready is not None:
            self._on_ready()
        while not await self.on_tick(0):  # counter 0: refresh the Date header
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), _DATE_REFRESH)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = self.server_state
        started = self._stop_requested_at or time.monotonic()
        deadline = started + self._options.drain_timeout
        state.flag.start()
        await stop_accepting(self.servers)
        logger.info(
            "draining: stopped accepting; %d connections, %d requests in flight",
            len(state.connections),
            len(state.tasks),
        )
        websockets = []
        for connection in list(state.connections):
            if isinstance(connection, DrainingHttp):
                connection.start_drain()
            else:
                websockets.append(connection)
        if self._on_drain is not None:
            self._on_drain()
        if websockets:
            await self._close_websockets(websockets, deadline)
        await self._wait_until(self._drained, deadline)
        self.report = await self._cut_remaining(started)
        if not self.force_exit:
            await self._shutdown_lifespan(deadline)

    async def _close_websockets(self, websockets: Sequence[object], deadline: float) -> None:
        """Give the application ``ws_grace`` to tell its clients, then send 1012."""
        connections = self.server_state.connections
        grace_end = min(deadline, time.monotonic() + self._options.ws_grace)
        await self._wait_until(lambda: connections.isdisjoint(websockets), grace_end)
        for websocket in websockets:
            if websocket in connections:
                # uvicorn's WebSocket protocols send close code 1012 (service restart).
                shutdown: Callable[[], object] | None = getattr(websocket, "shutdown", None)
                if shutdown is not None:
                    shutdown()

    async def _wait_until(self, done: Callable[[], bool], deadline: float) -> None:
        """Wait for ``done()``, re-checked at each change of connections or tasks."""
        state = self.server_state
        while not done() and not self.force_exit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            state.changed.clear()
            state.watch_tasks()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(state.changed.wait(), remaining)

    def _drained(self) -> bool:
        state = self.server_state
        opened = len(state.connections)
        return not opened and not state.tasks and not handshaking(self.servers, opened)

    async def _cut_remaining(self, started: float) -> DrainReport:
        connections = list(self.server_state.connections)
        unattached = handshaking(self.servers, len(connections))
        tasks = [task for task in self.server_state.tasks if not task.done()]
        for connection in connections:
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_CANCEL_GRACE)
        cut = len(connections) + unattached  # the handshaking ones end with the process
        report = DrainReport(time.monotonic() - started, cut, len(tasks))
        log_report(report, "a second signal" if self.force_exit else "the deadline")
        return report

    async def _shutdown_lifespan(self, deadline: float) -> None:
        budget = max(deadline - time.monotonic(), _LIFESPAN_MIN)
        try:
            await asyncio.wait_for(self.lifespan.shutdown(), budget)
        except asyncio.TimeoutError:
            logger.warning("lifespan shutdown did not finish within %.1f s; going on", budget)
