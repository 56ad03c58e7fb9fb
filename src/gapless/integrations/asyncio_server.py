"""Plain asyncio servers and ``websockets`` servers under gapless: the sockets,
``READY=1``, the drain signal and the drain's mechanics, in one context manager.

The server stays yours; :func:`serve_asyncio` gives it what a generation
needs and keeps the contract of :mod:`gapless.integrations` within reach:

* ``life.sockets``: the inherited listening sockets (``LISTEN_FDS``), or sockets
  opened for ``bind`` when started alone;
* ``life.ready()``: ``READY=1`` once you serve them;
* ``life.draining``: an :class:`asyncio.Event` set on the first SIGTERM or
  SIGINT (``STOPPING=1`` is sent then); ``life.deadline`` is when the drain must
  end; a second signal moves the deadline to now;
* ``await life.stop_accepting(servers)``: closes the listeners of asyncio
  servers without dropping a connection they already accepted (never
  ``shutdown()``, which breaks the socket the next generation shares);
* ``await life.finish(tasks)``: waits for your connection handlers until the
  deadline, cancels the rest, logs and returns how many were cut;
* ``await life.close_websockets(server)``: closes every connection of a
  ``websockets`` server with code 1012 (service restart), so clients reconnect
  to the next generation; ``await life.drain_websockets(server)`` is the whole
  drain of such a server;
* ``life.backlog(sock)``: the ``backlog=`` to pass to ``create_server`` (asyncio
  calls ``listen()`` again on the socket, which every generation shares).

Your protocol decides the rest of the drain: answer what was asked, tell the
client to go (``Connection: close``, a goodbye message) and close.

Example, a ``websockets`` server::

    async def main() -> None:
        async with gapless.serve_asyncio(bind=["127.0.0.1:8765"]) as life:
            sock = life.sockets[0]
            server = await websockets.asyncio.server.serve(
                handler, sock=sock, backlog=life.backlog(sock)
            )
            life.ready()
            await life.draining.wait()
            await life.drain_websockets(server)

    asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any

from ..errors import NotifyError, ServeError
from ..sockets.addresses import parse_bind
from ..sockets.listeners import open_listener
from ..systemd.listen_fds import consume_listen_fds
from ..systemd.notify import notify
from .common import SERVICE_RESTART, listen_backlog
from .drain import StopRequest, stop_accepting

__all__ = ["AsyncioLife", "serve_asyncio"]

logger = logging.getLogger("gapless.serve")


class AsyncioLife:
    """What :func:`serve_asyncio` gives: see the module docstring.

    Args:
        sockets: the listening sockets.
        drain_timeout: seconds from the first stop signal to :attr:`deadline`.
    """

    def __init__(self, sockets: list[socket.socket], drain_timeout: float) -> None:
        self.sockets = sockets
        self.drain_timeout = drain_timeout
        self._stop = StopRequest()
        self._stop.on_force = self._hurry
        self.draining = self._stop.event
        self._hurried = asyncio.Event()

    @property
    def deadline(self) -> float:
        """When the drain must end (``time.monotonic()``); infinity before it began."""
        if not self.draining.is_set():
            return math.inf
        return self._stop.at if self._stop.force else self._stop.at + self.drain_timeout

    def ready(self, status: str | None = None) -> None:
        """Send ``READY=1`` (and ``STATUS=``) to the manager, if there is one."""
        try:
            notify(ready=True, status=status)
        except NotifyError as exc:
            logger.warning("cannot tell the manager we are ready: %s", exc)

    def _on_stop(self) -> None:
        try:
            notify(stopping=True, status="draining")
        except NotifyError as exc:
            logger.warning("cannot tell the manager we are draining: %s", exc)

    def _hurry(self) -> None:
        self._hurried.set()

    async def stop_accepting(self, servers: Sequence[Any]) -> None:
        """Close the listeners of ``servers`` (:class:`asyncio.Server`, e.g. a
        ``websockets`` server's ``.server``) without dropping accepted connections."""
        await stop_accepting(servers)

    async def finish(self, tasks: Collection[asyncio.Task[Any]]) -> int:
        """Wait for ``tasks`` until :attr:`deadline`; cancel those still running.

        Returns:
            How many were cut (also logged).
        """
        pending = {task for task in tasks if not task.done()}
        while pending and time.monotonic() < self.deadline:
            hurried = asyncio.ensure_future(self._hurried.wait())
            timeout = self.deadline - time.monotonic()
            _, pending = await asyncio.wait(
                {*pending, hurried}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            hurried.cancel()
            pending.discard(hurried)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
            logger.warning("drain cut at the deadline: %d connections cancelled", len(pending))
        return len(pending)

    def backlog(self, sock: socket.socket) -> int:
        """The ``backlog=`` to give ``create_server(sock=...)``: asyncio calls
        ``listen()`` again, which would shrink the queue every generation shares."""
        return listen_backlog(sock)

    async def drain_websockets(self, server: Any) -> None:
        """The whole drain of a ``websockets`` server (``websockets.asyncio.server``):
        stop accepting, close every connection with 1012, wait for the handlers
        until :attr:`deadline` (a cut is logged)."""
        await stop_accepting([server.server])
        await self.close_websockets(server)
        server.close()  # closes nothing more: every connection is closing already
        try:
            await asyncio.wait_for(server.wait_closed(), max(self.deadline - time.monotonic(), 0))
        except asyncio.TimeoutError:
            left = len(getattr(server, "all_connections", ()))
            logger.warning("drain cut at the deadline: %d WebSockets left", left)

    async def close_websockets(self, server: Any, reason: str = "service restart") -> None:
        """Close every connection of a ``websockets`` server with code 1012.

        Args:
            server: a ``websockets`` server (its ``connections`` are closed).
            reason: the close reason sent.
        """
        closing = [conn.close(SERVICE_RESTART, reason) for conn in list(server.connections)]
        await asyncio.gather(*closing, return_exceptions=True)


@contextlib.asynccontextmanager
async def serve_asyncio(
    bind: Sequence[str] = (), *, drain_timeout: float = 30.0
) -> AsyncIterator[AsyncioLife]:
    """The sockets, readiness and drain signal of one generation of an asyncio server.

    Args:
        bind: addresses to open when no socket was inherited (``LISTEN_FDS``).
        drain_timeout: seconds the drain may take; see :attr:`AsyncioLife.deadline`.

    Yields:
        The :class:`AsyncioLife`; SIGTERM and SIGINT are handled inside the block.

    Raises:
        ServeError: no socket inherited and no ``bind`` given.
        GaplessError: a bind cannot be opened, or ``LISTEN_*`` is malformed.
    """
    sockets = [sock for _, sock in consume_listen_fds()]
    if not sockets:
        if not bind:
            raise ServeError("no listening socket: run under gapless run, or pass bind=[...]")
        sockets = [open_listener(parse_bind(text)) for text in bind]
    life = AsyncioLife(sockets, drain_timeout)
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        first = not life.draining.is_set()
        life._stop.request()
        if first:
            life._on_stop()

    for sig in StopRequest.SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    try:
        yield life
    finally:
        for sig in StopRequest.SIGNALS:
            loop.remove_signal_handler(sig)
        for sock in sockets:
            sock.close()
