"""The moment a server must stop accepting, awaitable from threads and event loops.

An asyncio server stops accepting on its own loop, after its ``await`` on
:meth:`Stopping.wait_async` returns. For the handover to reach systemd only once
that happened (invariant 3: stop accepting, then hand over), :meth:`Stopping.set`
asks each loop to acknowledge once the awaiting task has taken its next step,
and :meth:`Stopping.wait_acknowledged` waits for that, with a timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time

__all__ = ["Stopping"]


class Stopping:
    """A one-shot event: ``set()`` from any thread wakes ``wait()`` callers and every
    asyncio task awaiting :meth:`wait_async`."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._acks: list[threading.Event] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    async def wait_async(self) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._event.is_set():
                return
            self._waiters.append((loop, future))
        await future

    def set(self) -> None:
        with self._lock:
            self._event.set()
            waiters, self._waiters = self._waiters, []
        acks = [_wake(loop, future) for loop, future in waiters]
        self._acks = [ack for ack in acks if ack is not None]

    def wait_acknowledged(self, timeout: float) -> bool:
        """Wait until every task woken by :meth:`set` ran its step after the await
        (where a server closes its listener); False if one did not within ``timeout``."""
        deadline = time.monotonic() + timeout
        return all(ack.wait(max(0.0, deadline - time.monotonic())) for ack in self._acks)


def _wake(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> threading.Event | None:
    """Resolve ``future`` on its loop; return an event set once the task awaiting
    it has taken its next step, or None if there is nothing to wait for."""
    ack = threading.Event()

    def resolve() -> None:
        if not future.done():
            future.set_result(None)  # schedules the task's wakeup first...
        loop.call_soon(ack.set)  # ...so this runs after the task's next step

    try:
        loop.call_soon_threadsafe(resolve)
    except RuntimeError:
        return None  # that loop is closed: nobody waits there
    try:
        same_thread = asyncio.get_running_loop() is loop
    except RuntimeError:
        same_thread = False
    return None if same_thread else ack  # a loop cannot wait on itself
