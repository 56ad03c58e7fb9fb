"""granian (ASGI over HTTP/1.1, its Rust HTTP stack) on inherited sockets, with a
drain that loses nothing a keep-alive client sends.

A little over 300 lines: most of it is this account of the granian internals
relied on and of its drain, which belongs beside the code that depends on it.

granian has no option to serve an inherited socket, but its worker class
(``ASGIWorker``) serves a ``SocketHolder(fd, uds, backlog)``: this module runs
one such worker per socket in this process, the way granian's own worker
processes do (``granian.server.mp``: runtime mode ``mt``, one Rust thread, the
asyncio task implementation), so the Rust speed is kept. Each worker gets a
``dup()`` of its socket, which granian closes when it stops.

granian's own shutdown (its ``WorkerSignal``) is hyper's graceful shutdown: it
stops accepting, answers requests in flight with ``Connection: close``, and
closes every idle keep-alive connection at once, while its client may already
be sending on it (measured: an idle connection is closed within milliseconds of
the signal). So the drain keeps granian's signal for last (see
:mod:`gapless.integrations` for the contract):

* stop accepting without granian: the fd granian accepts on is replaced,
  atomically (``dup2``), by a listening socket nobody connects to, so granian's
  accept loop waits on it forever while every connection it holds is served;
  the process's own fds of the listeners are ``close()``d (never ``shutdown()``).
  Non-blocking, or granian's next ``accept()`` would block its thread;
* responses started during the drain say ``Connection: close``
  (:class:`~.common.CloseWhenDraining`), so hyper ends each connection after
  that response, the way the client was told;
* an idle connection is closed by granian's steady-state expiry only:
  ``--keep-alive`` is granian's HTTP/1 ``header_read_timeout``, which closes a
  connection silent that long, in steady state as in the drain;
* the drain waits until the process holds no connection (counted from
  ``/proc/self/fd`` and sock_diag, :mod:`gapless.sockets.connections`), then
  gives granian its signal, which then has nothing to close;
* the deadline: what remains is counted, logged and cut by leaving the process.

granian tells Python nothing when a connection closes, so the count is read
again after each response of the drain and at growing intervals (from 1 ms to
50 ms) in between: that is the one wait here not on an event.

granian internals relied on (tested with 2.8.9): ``granian._granian``'s
``ASGIWorker`` (its constructor and ``serve_mtr``/``serve_mtr_uds``),
``SocketHolder`` and ``WorkerSignal`` (``set``, ``add_cb``), ``granian.asgi``'s
``LifespanProtocol`` and ``_callback_wrapper``, ``granian._futures`` and
``granian._loops``. HTTP/1.1 only: HTTP/2 would need a drain of its own.

Example::

    report = serve_granian(app, sockets, ServeOptions(), on_ready=gapless.ready)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import OptionIgnoredError, ServeError
from ..sockets.connections import ConnectionCounter
from .common import (
    ASGIApp,
    CloseWhenDraining,
    DrainFlag,
    DrainReport,
    Receive,
    Scope,
    Send,
    ServeOptions,
    listen_backlog,
)
from .drain import StopRequest, log_report

try:
    import granian
    from granian import _futures, _granian, _loops
    from granian import asgi as _granian_asgi
    from granian import http as _granian_http
    from granian import log as _granian_log
except ImportError:  # pragma: no cover - the message names the fix
    raise ServeError("--server granian needs granian: pip install 'gapless[granian]'") from None

# granian's stubs do not match its 2.8 extension (SocketHolder's backlog, serve_mtr):
# its internals are used untyped.
_native: Any = _granian
_futures_any: Any = _futures
_asgi: Any = _granian_asgi
_log: Any = _granian_log
_loops_any: Any = _loops

__all__ = ["TESTED", "serve_granian"]

logger = logging.getLogger("gapless.serve")

#: The granian versions whose internals this module was tested with.
TESTED = "2.8"
_MIN_BUFFER = 8192  # hyper refuses (panics on) a smaller HTTP/1 buffer
_RUNTIME_BLOCKING_THREADS = 512  # granian's defaults, so the speed is granian's
_BACKPRESSURE = 1024
_FIRST_LOOK, _LONGEST_LOOK = 0.001, 0.05
_LIFESPAN_MIN = 1.0  # lifespan shutdown runs even when the drain used the deadline


class _CloseWhenDraining(CloseWhenDraining):
    """The shared middleware, out of the way until the drain starts, and telling
    the drain when a response of the drain is sent (its connection then closes)."""

    def __init__(self, app: ASGIApp, flag: DrainFlag) -> None:
        super().__init__(app, flag)
        self.responded = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.flag.started and scope["type"] == "http":
            # A response started before the drain keeps its connection alive; the
            # client's next request on it is answered with Connection: close.
            await self.app(scope, receive, send)
            return
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.flag.started:
                self.responded.set()


def serve_granian(
    app: ASGIApp,
    sockets: Sequence[socket.socket],
    options: ServeOptions,
    *,
    on_ready: Callable[[], object] | None = None,
    on_drain: Callable[[], object] | None = None,
) -> DrainReport:
    """Serve ``app`` with granian on ``sockets`` until SIGTERM or SIGINT, then drain.

    Args:
        app: an ASGI 3 application.
        sockets: listening sockets (TCP or unix), each served by a granian worker.
        options: the settings.
        on_ready: called once the lifespan startup completed and every socket is served.
        on_drain: called once granian stopped accepting and the drain began.

    Returns:
        How the drain ended.

    Raises:
        ServeError: granian is not a tested version, or the lifespan startup failed.
        OptionIgnoredError: ``--max-header-size`` is below what granian can take.
    """
    version = str(granian.__version__)
    if not version.startswith(TESTED + "."):
        raise ServeError(
            f"granian {version} is untested with gapless: pip install 'gapless[granian]' "
            f"(granian {TESTED}.x)"
        )
    if options.max_header_size < _MIN_BUFFER:
        raise OptionIgnoredError(
            f"--max-header-size {options.max_header_size} is below granian's least, "
            f"{_MIN_BUFFER}: raise it"
        )
    _log.configure_logging(_log.LogLevels(options.log_level), None, True)
    loop: asyncio.AbstractEventLoop = _loops_any.loops.get(
        "auto"
    )  # as granian's workers: uvloop or rloop when installed
    try:
        return loop.run_until_complete(_Worker(app, sockets, options).run(on_ready, on_drain))
    finally:
        loop.close()


class _Worker:
    def __init__(
        self, app: ASGIApp, sockets: Sequence[socket.socket], options: ServeOptions
    ) -> None:
        self.app = app
        self.sockets = list(sockets)
        self.options = options
        self.counter = ConnectionCounter.of(self.sockets)
        self.flag = DrainFlag()
        self.middleware = _CloseWhenDraining(app, self.flag)
        self.stop = StopRequest()
        self.stop.on_force = self.middleware.responded.set
        self.signals: list[Any] = []
        self.fds: list[int] = []  # the dup of each socket that granian accepts on
        self.stopped = 0  # granian workers whose connections all ended
        self.all_stopped = asyncio.Event()

    async def run(
        self, on_ready: Callable[[], object] | None, on_drain: Callable[[], object] | None
    ) -> DrainReport:
        self.stop.install()
        lifespan = _asgi.LifespanProtocol(self.middleware)
        await lifespan.startup()
        if lifespan.interrupt:
            raise ServeError(f"the application's startup failed: {lifespan.exc!r}")
        self._start(lifespan.state)
        if on_ready is not None:
            on_ready()
        await self.stop.event.wait()
        report = await self._drain(on_drain)
        if not self.stop.force:
            deadline = self.stop.at + self.options.drain_timeout
            budget = max(deadline - time.monotonic(), _LIFESPAN_MIN)
            try:
                await asyncio.wait_for(lifespan.shutdown(), budget)
            except (asyncio.TimeoutError, Exception) as exc:
                logger.warning("lifespan shutdown did not complete: %r; going on", exc)
        return report

    def _start(self, state: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        access = _log.DEFAULT_ACCESSLOG_FMT if self.options.access_log else None
        callback = _futures_any._future_watcher_wrapper(
            _asgi._callback_wrapper(self.middleware, {"url_path_prefix": None}, state, access)
        )
        for index, sock in enumerate(self.sockets, 1):
            uds = sock.family == socket.AF_UNIX
            fd = os.dup(sock.fileno())
            holder = _native.SocketHolder(fd, uds, listen_backlog(sock))
            signal = _native.WorkerSignal()
            signal.add_cb(lambda: loop.call_soon_threadsafe(self._worker_stopped))
            worker = _native.ASGIWorker(index, (None, holder), None, *self._settings())
            serve = worker.serve_mtr_uds if uds else worker.serve_mtr
            serve(_futures_any._new_cbscheduler(loop, callback, impl_asyncio=True), loop, signal)
            self.signals.append(signal)
            self.fds.append(fd)

    def _settings(self) -> tuple[Any, ...]:
        options = self.options
        http1 = _granian_http.HTTP1Settings(
            # hyper's head timeout is its idle keep-alive expiry as well.
            header_read_timeout=max(int(options.keep_alive * 1000), 1),
            keep_alive=options.keep_alive > 0,
            max_buffer_size=options.max_header_size,
        )
        tls = options.certfile is not None
        return (
            1,  # Rust runtime threads, as granian's default
            _RUNTIME_BLOCKING_THREADS,
            1,  # Python threads: one for ASGI
            30,  # their idle timeout (s)
            _BACKPRESSURE,
            "1",  # HTTP/1.1 only: the drain below is HTTP/1's
            http1,
            None,
            True,  # WebSockets
            None,  # static files
            tls,
            options.certfile,
            options.keyfile,
            None,  # key password
            "tls1.2",
            None,  # client CA
            [],
            False,
            (None, None),  # metrics
        )

    def _worker_stopped(self) -> None:
        self.stopped += 1
        if self.stopped == len(self.signals):
            self.all_stopped.set()

    async def _drain(self, on_drain: Callable[[], object] | None) -> DrainReport:
        deadline = self.stop.at + self.options.drain_timeout
        self.flag.start()
        self._stop_accepting()
        logger.info("draining: stopped accepting; %d connections", self._connections())
        if on_drain is not None:
            on_drain()
        if self.middleware.has_websockets:
            grace = min(deadline, time.monotonic() + self.options.ws_grace)
            await self._wait(lambda: not self.middleware.has_websockets, grace)
            await self.middleware.close_websockets()
        await self._wait(lambda: self._connections() == 0, deadline)
        cut = self._connections()
        for signal in self.signals:
            signal.set()  # granian stops; with no connection left there is nothing to close
        if not cut and not self.stop.force:
            with contextlib.suppress(asyncio.TimeoutError):
                remaining = max(deadline - time.monotonic(), _LIFESPAN_MIN)
                await asyncio.wait_for(self.all_stopped.wait(), remaining)
        report = DrainReport(time.monotonic() - self.stop.at, cut)
        log_report(report, "a second signal" if self.stop.force else "the deadline")
        return report

    def _stop_accepting(self) -> None:
        for fd, sock in zip(self.fds, self.sockets, strict=True):
            # A listening unix socket in the abstract namespace, non-blocking: granian's
            # accept() on it says EAGAIN and its loop waits, never blocking its thread.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
                idle.setblocking(False)
                idle.bind("")  # an abstract name the kernel picks
                idle.listen(1)
                os.dup2(idle.fileno(), fd)
            sock.close()

    def _connections(self) -> int:
        return self.counter.count([os.getpid()])

    async def _wait(self, done: Callable[[], bool], deadline: float) -> None:
        """Wait for ``done()``, read again after each response of the drain and at
        growing intervals: granian reports no connection's end."""
        pause = _FIRST_LOOK
        responded = self.middleware.responded
        while not done() and not self.stop.force:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            responded.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(responded.wait(), min(pause, remaining))
            pause = min(pause * 2, _LONGEST_LOOK)
