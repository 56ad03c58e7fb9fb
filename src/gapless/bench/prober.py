"""The open-loop prober: requests at a fixed rate, each one recorded with its outcome.

Request ``i`` is due at ``t0 + i / rate`` whether or not earlier ones have answered
(an open loop: a stalled server does not slow the prober down, so a stall shows as
latency and failures, not as fewer requests). Latency runs from the due time, so
time spent waiting for a pooled connection counts too.

Why asyncio and raw sockets, not ``http.client`` threads: one event loop keeps
hundreds of requests in flight at a precise rate without a thread each, and reading
the bytes ourselves tells the outcomes apart exactly: a refused connect, a reset, a
connection closed before any byte of an answer, a timeout, or a status >= 500.
``http.client`` folds several of these into one ``RemoteDisconnected``.

With keep-alive, up to ``connections`` connections are reused oldest-idle first, as
a client pool spreads its requests. A pooled connection the server already closed
is dropped before use, as HTTP client pools do (urllib3 checks before reuse); only
a close that races a request in flight counts as a failure.

Example::

    prober = Prober(ProberConfig(TcpAddress("127.0.0.1", 8000), rate=200))
    prober.start(t0 := time.monotonic())
    prober.finish_at(t0 + 5.0)  # any time, from any thread
    samples = prober.join()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import re
import threading
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

from ..sockets.addresses import TcpAddress

__all__ = ["FAILURES", "OUTCOMES", "Prober", "ProberConfig", "Sample"]

#: Outcome classes, "ok" first; "closed" is closed without (a whole) answer.
OUTCOMES = ("ok", "refused", "reset", "closed", "timeout", "status>=500", "other")
FAILURES = OUTCOMES[1:]
_PID = re.compile(rb"pid (\d+)")

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass(frozen=True)
class Sample:
    """One request: due ``start`` seconds after t0, ``latency`` seconds to its outcome;
    ``pid`` is the process its body named, 0 if none."""

    start: float
    latency: float
    outcome: str
    pid: int = 0


@dataclass(frozen=True)
class ProberConfig:
    address: TcpAddress
    rate: float = 200.0
    keep_alive: bool = True
    connections: int = 32
    timeout: float = 5.0
    cpus: Collection[int] = ()


class _Closed(Exception):
    """The server closed the connection before a whole answer."""


class Prober:
    """Runs the open loop in a thread of its own, with its own event loop."""

    def __init__(self, config: ProberConfig) -> None:
        self.config = config
        self.samples: list[Sample] = []
        self._thread: threading.Thread | None = None
        self._end = math.inf
        self._idle: deque[Connection] = deque()
        self._open = 0
        self._released: asyncio.Condition | None = None
        self._request = (
            f"GET / HTTP/1.1\r\nHost: {config.address.host}\r\nUser-Agent: gapless-bench\r\n"
            + ("" if config.keep_alive else "Connection: close\r\n")
            + "\r\n"
        ).encode()

    def start(self, t0: float) -> None:
        """Start sending; request 0 is due at ``t0`` (a ``time.monotonic()`` value)."""
        self._thread = threading.Thread(target=self._run, args=(t0,), name="prober")
        self._thread.start()

    def finish_at(self, end: float) -> None:
        """Send no request due at ``end`` (a ``time.monotonic()`` value) or later."""
        self._end = end

    def join(self) -> list[Sample]:
        """Wait until the last request has its outcome; return every sample in due order."""
        if self._thread is not None:
            self._thread.join()
        return sorted(self.samples, key=lambda sample: sample.start)

    def _run(self, t0: float) -> None:
        if self.config.cpus:
            os.sched_setaffinity(0, self.config.cpus)  # this thread only
        asyncio.run(self._main(t0))

    async def _main(self, t0: float) -> None:
        loop = asyncio.get_running_loop()
        self._released = asyncio.Condition()
        tasks = set()
        for number in itertools.count():
            due = t0 + number / self.config.rate
            if due >= self._end:
                break
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)  # pacing the open loop, not synchronisation
            task = asyncio.create_task(self._probe(due - t0, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.wait(set(tasks))
        while self._idle:
            self._idle.popleft()[1].close()

    async def _probe(self, start: float, due: float) -> None:
        loop = asyncio.get_running_loop()
        pid = 0
        try:
            status, pid = await asyncio.wait_for(self._exchange(), self.config.timeout)
            outcome = "ok" if status < 400 else "status>=500" if status >= 500 else "other"
        except asyncio.TimeoutError:
            outcome = "timeout"
        except ConnectionRefusedError:
            outcome = "refused"
        except (ConnectionResetError, BrokenPipeError):
            outcome = "reset"
        except (_Closed, asyncio.IncompleteReadError):
            outcome = "closed"
        except (OSError, ValueError):
            outcome = "other"
        self.samples.append(Sample(start, loop.time() - due, outcome, pid))

    async def _exchange(self) -> tuple[int, int]:
        connection = await self._acquire()
        reader, writer = connection
        reusable = False
        try:
            writer.write(self._request)
            await writer.drain()
            status, body, reusable = await _read_response(reader)
            match = _PID.search(body)
            return status, int(match.group(1)) if match else 0
        finally:
            await self._release(connection, reusable and self.config.keep_alive)

    async def _acquire(self) -> Connection:
        assert self._released is not None
        if not self.config.keep_alive:
            return await self._connect()
        async with self._released:
            while True:
                while self._idle:
                    reader, writer = self._idle.popleft()
                    if not (reader.at_eof() or writer.is_closing() or reader.exception()):
                        return reader, writer
                    writer.close()  # closed by the server while idle: a pool drops it
                    self._open -= 1
                if self._open < self.config.connections:
                    self._open += 1
                    break
                await self._released.wait()
        try:
            return await self._connect()
        except BaseException:
            await self._forget()
            raise

    async def _release(self, connection: Connection, reusable: bool) -> None:
        if reusable:
            assert self._released is not None
            async with self._released:
                self._idle.append(connection)
                self._released.notify()
            return
        connection[1].close()
        if self.config.keep_alive:
            await self._forget()

    async def _forget(self) -> None:
        assert self._released is not None
        async with self._released:
            self._open -= 1
            self._released.notify()

    async def _connect(self) -> Connection:
        address = self.config.address
        return await asyncio.open_connection(address.host, address.port)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Read one HTTP/1.x response; return its status, body and whether the connection
    may carry another request."""
    status_line = await reader.readline()
    if not status_line:
        raise _Closed()
    version, _, rest = status_line.partition(b" ")
    status = int(rest[:3])
    headers: dict[bytes, bytes] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n"):
        if not line:
            raise _Closed()
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    connection = headers.get(b"connection", b"").lower()
    keep = connection != b"close" and (version == b"HTTP/1.1" or connection == b"keep-alive")
    if b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = await _read_chunks(reader)
    else:
        body, keep = await reader.read(), False
    return status, body, keep


async def _read_chunks(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        line = await reader.readline()
        if not line:
            raise _Closed()
        size = int(line.split(b";")[0], 16)
        if size == 0:
            break
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
    with contextlib.suppress(asyncio.IncompleteReadError):
        await reader.readuntil(b"\r\n")  # the (empty) trailer's end
    return b"".join(parts)
