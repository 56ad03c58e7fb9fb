"""The prober: threads of ``http.client`` requests, each failure recorded by class,
each answer's pid noted, with waits on answers (``load.Wrk`` is the other load).

Example::

    with Prober(port) as prober:  # returns at the first answer
        ...reloads...
    assert prober.failures == []
"""

from __future__ import annotations

import http.client
import re
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

TIMEOUT = 15.0  # the answer waits (manager_harness had 15 s)


@dataclass
class LoadResult:
    """What a :class:`Prober` saw: its requests, the failed ones by class, each failure."""

    requests: int
    failures: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class Prober:
    """Threads sending ``GET /`` one after another; only a 200 is an answer, anything
    else a failure recorded by class; the pid a body names (``pid N``) is noted.

    Args:
        port: where to send.
        threads: how many threads; even ones open a connection per request,
            odd ones keep theirs alive as long as the server allows.
        tls: an SSL context to speak HTTPS with, or None for plain HTTP.
        timeout: how long one request may take.

    Example::

        with Prober(port) as prober:  # returns at the first answer
            ...reloads...
        assert prober.failures == []
    """

    def __init__(
        self,
        port: int,
        threads: int = 1,
        tls: ssl.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.port = port
        self.tls = tls
        self.timeout = timeout
        self.answered = 0
        self.failures: list[str] = []
        self.pids: set[int] = set()
        self.result = LoadResult(0, examples=self.failures)
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(bool(i % 2),), daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _connect(self) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=self.timeout, context=self.tls
            )
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)

    def _run(self, keep_alive: bool) -> None:
        connection = self._connect()
        while not self._stop.is_set():
            kind, failure, status, body = request(connection)
            if kind is None and status != 200:
                kind = "non-200"
            with self._changed:
                self.result.requests += 1
                if kind is not None:
                    self.result.failures[kind] += 1
                    self.failures.append(failure)
                else:
                    self.answered += 1
                    if match := _PID.match(body):
                        self.pids.add(int(match.group(1)))
                self._changed.notify_all()
            if kind is not None or not keep_alive:
                connection.close()

    def _wait_for(self, done: Callable[[], bool], what: str) -> None:
        with self._changed:
            ok = self._changed.wait_for(done, TIMEOUT)
        assert ok, f"{what} in {TIMEOUT} s: {self.failures[:3]}"

    def wait_answer_from(self, pid: int | None = None) -> None:
        """Wait for an answer (from ``pid`` if given), fail loudly after TIMEOUT."""
        if pid is None:
            self._wait_for(lambda: self.answered > 0, "no answer")
        else:
            self._wait_for(lambda: pid in self.pids, f"no answer from {pid}")

    def wait_answer_from_any(self, pids: Collection[int]) -> None:
        """Wait for an answer from one of ``pids`` (a generation's processes)."""
        self._wait_for(lambda: not self.pids.isdisjoint(pids), f"no answer from any of {pids}")

    def wait_answers(self, count: int) -> None:
        """Wait until ``count`` requests were answered in all."""
        self._wait_for(lambda: self.answered >= count, f"fewer than {count} answers")

    def stop(self) -> LoadResult:
        """Stop probing (before the server is stopped on purpose); what was seen."""
        self._stop.set()
        for thread in self._threads:
            thread.join(TIMEOUT)
        return self.result

    def finish(self) -> None:
        self.stop()

    def __enter__(self) -> Prober:
        self.wait_answer_from()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_PID = re.compile(r"pid (\d+)")


def request(
    connection: http.client.HTTPConnection, path: str = "/"
) -> tuple[str | None, str, int, str]:
    """One request: its failure class (None if it got a 2xx), the failure as
    ``ExceptionType: message`` or ``HTTP status``, its status or 0, its body."""
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return _failure_class(exc), f"{type(exc).__name__}: {exc}", 0, ""
    status = response.status
    kind = None if 200 <= status < 300 else "status" if status >= 500 else "non-2xx"
    return kind, f"HTTP {status}", status, body


def _failure_class(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed without answer"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    return type(exc).__name__


def probe(connection: http.client.HTTPConnection, path: str = "/") -> str | None:
    """One request; None if it got a 2xx, else ``class: ExceptionType: message``."""
    kind, detail, _, _ = request(connection, path)
    return None if kind is None else f"{kind}: {detail}"
