"""Load that counts every failure: :class:`Wrk` (wrk in the background, its counts
read from a Lua ``done()`` report rather than wrk's prose) and :class:`Prober`
(threads of ``http.client`` requests, each failure recorded by class).

Example::

    with Wrk(port, tmp_path, close=True) as wrk:
        wrk.wait_started()
        ...reloads...
        report = wrk.stop()
    assert report.failed == 0, report.examples
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

TIMEOUT = 30.0
WRK = shutil.which("wrk")

# The per-response hook counts every status outside 2xx (wrk's own count is of
# statuses above 399) and says when the load has begun; it costs wrk some speed,
# so the figures leave it out.
_HOOK = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) non2xx = 0 started = false end
function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
  if not started then
    started = true
    io.write("WRK_STARTED\\n")
    io.stdout:flush()
  end
end
local function non_2xx(summary)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + (tonumber(t:get("non2xx")) or 0) end
  return bad
end
"""
_NO_HOOK = """
local function non_2xx(summary) return summary.errors.status end
"""
# done() runs in wrk's main Lua state through an unprotected lua_call: any error
# there (a nil from a thread, say) makes LuaJIT panic and exit(1) right after wrk
# printed its own summary. So done() protects itself and flushes, and Wrk.wait
# falls back on wrk's own summary lines, with wrk's stderr in the message.
_DONE = """
local function report(summary, latency)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "seconds": %.3f, "connect": %d, "read": %d, "write": %d, '
    .. '"timeout": %d, "non_2xx": %d, "p99_ms": %.1f}\\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.timeout,
    non_2xx(summary), latency:percentile(99) / 1000))
end
function done(summary, latency, requests)
  local ok, err = pcall(report, summary, latency)
  if not ok then io.write("WRK_ERROR " .. tostring(err) .. "\\n") end
  io.flush()
end
"""
_JSON = "WRK_JSON "
# wrk's own summary: the fallback when the script's line is missing.
_REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.M)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_STATUS = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass(frozen=True)
class WrkReport:
    requests: int
    seconds: float
    connect: int
    read: int
    write: int
    timeout: int
    non_2xx: int
    p99_ms: float
    output: str = field(default="", repr=False, compare=False)

    @property
    def socket_errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout

    @property
    def failed(self) -> int:
        return self.socket_errors + self.non_2xx

    @property
    def failures(self) -> Counter[str]:
        """The failed requests by class, only the classes that have any."""
        names = ("connect", "read", "write", "timeout", "non_2xx")
        return Counter({name: getattr(self, name) for name in names if getattr(self, name)})

    @property
    def examples(self) -> list[str]:
        """wrk's whole output when anything failed."""
        return [self.output] if self.failed else []

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return (
            f"{self.requests} requests in {self.seconds:.1f} s, socket errors: connect "
            f"{self.connect} read {self.read} write {self.write} timeout {self.timeout}, "
            f"non-2xx {self.non_2xx}, p99 {self.p99_ms} ms"
        )


def parse_report(out: str, err: str) -> WrkReport | None:
    """The script's ``WRK_JSON`` line, else wrk's own summary lines, else None."""
    for line in out.splitlines():
        if line.startswith(_JSON):
            return WrkReport(**json.loads(line[len(_JSON) :]), output=out + err)
    found = _REQUESTS.search(out)
    if not found:
        return None
    socket_errors = _SOCKET.search(out)
    status = _STATUS.search(out)
    connect, read, write, timeout = (
        (int(n) for n in socket_errors.groups()) if socket_errors else (0, 0, 0, 0)
    )
    non_2xx = int(status.group(1)) if status else 0
    requests = int(found.group(1))  # its duration is in wrk's units; not needed here
    return WrkReport(requests, 0.0, connect, read, write, timeout, non_2xx, 0.0, out + err)


class Wrk:
    """``wrk -t1`` against 127.0.0.1:``port`` until :meth:`stop` (SIGINT: wrk then
    reports as at its end) or for ``seconds``.

    Args:
        port: where to send.
        script_dir: where to write the Lua script.
        connections: wrk's -c.
        close: send ``Connection: close`` (a new connection per request).
        seconds: how long; None: until stopped.
        count_responses: run the per-response hook: every status outside 2xx is a
            failure, and :meth:`wait_started` works; False gives wrk its full speed
            and counts only the statuses above 399.
    """

    def __init__(
        self,
        port: int,
        script_dir: Path,
        *,
        connections: int = 16,
        close: bool = False,
        seconds: int | None = None,
        count_responses: bool = True,
    ) -> None:
        assert WRK is not None, "wrk is not installed (bash scripts/setup.sh as root)"
        fd, script = tempfile.mkstemp(suffix=".lua", prefix="wrk_report", dir=script_dir)
        with os.fdopen(fd, "w") as file:
            file.write((_HOOK if count_responses else _NO_HOOK) + _DONE)
        duration = f"{seconds or 600}s"
        argv = [WRK, "-t1", f"-c{connections}", f"-d{duration}", "--timeout", "10s"]
        argv += ["-s", script]
        if close:
            argv += ["-H", "Connection: close"]
        self.process = subprocess.Popen(
            [*argv, f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.report: WrkReport | None = None

    def wait_started(self) -> None:
        """Return at wrk's first answered request; fail loudly if it ends first."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("WRK_STARTED"):
                return
        raise AssertionError(f"wrk ended (code {self.process.wait()}) before any answer")

    def stop(self) -> WrkReport:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.wait()

    def wait(self, timeout: float = TIMEOUT) -> WrkReport:
        out, err = self.process.communicate(timeout=timeout)
        self.report = parse_report(out, err)
        if self.report is None:
            code = self.process.returncode
            raise AssertionError(f"no report from wrk (exit {code}):\n{out}\n{err}")
        return self.report

    def __enter__(self) -> Wrk:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(TIMEOUT)


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
