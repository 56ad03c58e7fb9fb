"""The mechanics every drain shares: closing the listeners without dropping an
accepted connection, counting the connections still handshaking, waiting on
changes instead of polling, and logging how a drain ended.

Example::

    await stop_accepting(servers)             # asyncio servers on shared sockets
    tracked = Tracked()                       # connections, removed as they end
    await tracked.wait_until(lambda: not tracked.items, deadline)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from .common import DrainReport

__all__ = ["StopRequest", "Tracked", "handshaking", "log_report", "stop_accepting"]

logger = logging.getLogger("gapless.serve")

_T = TypeVar("_T")


class Tracked(Generic[_T]):
    """A set of live things (connections, tasks) and an event set at each removal."""

    def __init__(self) -> None:
        self.items: set[_T] = set()
        self.changed = asyncio.Event()

    def add(self, item: _T) -> None:
        self.items.add(item)

    def discard(self, item: _T) -> None:
        self.items.discard(item)
        self.changed.set()

    async def wait_until(
        self, done: Callable[[], bool], deadline: float, stop: Callable[[], bool] = bool
    ) -> None:
        """Wait for ``done()``, re-checked at each removal, until ``deadline``
        (monotonic) or ``stop()`` (called with no argument: ``bool()`` is False)."""
        while not done() and not stop():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)


class StopRequest:
    """The stop signals, through the event loop: the first TERM or INT starts the
    drain, the next one cuts it (``force``); the process then exits normally."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.force = False
        self.at = 0.0  # time.monotonic() of the first request
        self.on_force: Callable[[], object] | None = None

    def install(self) -> None:
        """Handle the stop signals in the running loop."""
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            loop.add_signal_handler(sig, self.request)

    def request(self) -> None:
        """Start the drain; a second time, cut it."""
        if self.event.is_set():
            self.force = True
            if self.on_force is not None:
                self.on_force()
        else:
            self.at = time.monotonic()
        self.event.set()

    def forced(self) -> bool:
        return self.force


def handshaking(servers: Sequence[asyncio.base_events.Server], opened: int) -> int:
    """Connections accepted but not yet given to their protocol (a TLS handshake).

    asyncio calls ``connection_made`` on a TLS connection only once its handshake
    completed, so until then it is missing from uvicorn's connections; asyncio's
    server counts every transport it made, in ``_active_count`` (Python 3.10 to
    3.13), and each opened one is in uvicorn's connections. A failed
    handshake wakes no waiter: the drain then notices it at the next change or
    at the deadline, which only delays the exit.
    """
    attached = sum(getattr(server, "_active_count", 0) for server in servers)
    return max(attached - opened, 0)


async def stop_accepting(servers: Sequence[asyncio.base_events.Server]) -> None:
    """Close the listening sockets without dropping a connection accepted from them.

    asyncio accepts a batch of connections in one callback, makes each one's
    transport in a task that runs on the next loop iteration, and calls the
    protocol's ``connection_made`` on the iteration after. A ``Server.close()``
    before the transport exists makes its task fail (``Server._attach`` asserts
    the server is open) and the connection, accepted and with a request
    waiting, is closed unanswered; one whose ``connection_made`` has not run yet
    is missing from the connections the drain waits for. So: stop reading the
    listeners (this also cancels an accept callback already due), let the loop
    run twice (its ready queue is FIFO: the transports are made, then their
    ``connection_made`` runs, before we resume), then close. ``close()``, never
    ``shutdown()``: the next generation shares these sockets.
    """
    loop = asyncio.get_running_loop()
    for server in servers:
        for sock in server.sockets:
            loop.remove_reader(sock.fileno())
    for _ in range(2):
        await asyncio.sleep(0)  # one loop iteration each, not a delay: see above
    for server in servers:
        server.close()


def log_report(report: DrainReport, cause: str) -> None:
    if report.clean:
        logger.info("drained in %.2f s; nothing cut", report.seconds)
    else:
        logger.warning(
            "drain cut by %s after %.2f s: %d connections closed, %d requests cancelled",
            cause,
            report.seconds,
            report.cut_connections,
            report.cut_tasks,
        )
