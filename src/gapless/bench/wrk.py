"""The saturating load: Debian's ``wrk``, its counts read from a Lua ``done()`` report.

wrk prints its errors in prose; the script below makes it print one JSON line,
prefixed ``WRK_JSON``, that :func:`parse_report` reads. ``non_2xx`` is wrk's own
``errors.status``: responses with a status above 399, what wrk prints as
"Non-2xx or 3xx responses". No ``response()`` hook is defined, so wrk keeps its
full speed (a Lua hook per response costs it a good share).

Example::

    run = WrkRun(TcpAddress("127.0.0.1", 8000), duration=10, connections=32)
    run.start()
    report = run.finish(timeout=30)
    print(report.requests, report.socket_errors, report.non_2xx)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Collection
from dataclasses import asdict, dataclass

from ..errors import BenchError
from ..sockets.addresses import TcpAddress

__all__ = ["WrkReport", "WrkRun", "lua_script", "parse_report", "wrk_path"]

PREFIX = "WRK_JSON "
_FIELDS = ("requests", "duration_us", "bytes", "connect", "read", "write", "timeout", "non_2xx")

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "timeout": %d, "non_2xx": %d, "p50_us": %.0f, "p99_us": %.0f, '
    .. '"max_us": %.0f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.timeout, e.status, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class WrkReport:
    """wrk's counts for one run; latencies in microseconds."""

    requests: int
    duration_us: int
    bytes: int
    connect: int
    read: int
    write: int
    timeout: int
    non_2xx: int
    p50_us: float = 0.0
    p99_us: float = 0.0
    max_us: float = 0.0

    @property
    def socket_errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout

    @property
    def failed(self) -> int:
        return self.socket_errors + self.non_2xx

    @property
    def rate(self) -> float:
        return self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0

    def to_json(self) -> dict[str, float]:
        return {**asdict(self), "socket_errors": self.socket_errors, "rate": self.rate}


def lua_script(keep_alive: bool) -> str:
    """The script: ``Connection: close`` on every request unless ``keep_alive``."""
    header = "" if keep_alive else 'wrk.headers["Connection"] = "close"\n'
    return header + _DONE


def parse_report(output: str) -> WrkReport:
    """Find the ``WRK_JSON`` line in wrk's output and read it.

    Raises:
        BenchError: no such line, or it is not the JSON expected.
    """
    for line in output.splitlines():
        if line.startswith(PREFIX):
            try:
                fields = json.loads(line[len(PREFIX) :])
                return WrkReport(**{name: fields[name] for name in fields})
            except (ValueError, TypeError, KeyError) as exc:
                raise BenchError(f"wrk's report {line!r} is not readable: {exc}") from None
    raise BenchError(f"wrk printed no {PREFIX.strip()} line; its output: {output[-300:]!r}")


def wrk_path() -> str | None:
    """Where wrk is, or None (install it with ``apt-get install wrk``)."""
    return shutil.which("wrk")


class WrkRun:
    """wrk against ``address`` for ``duration`` seconds (rounded up: wrk counts whole
    seconds), one thread per CPU in ``cpus`` (it inherits the caller's affinity).

    Raises:
        BenchError: wrk is missing, failed, or printed no report.
    """

    def __init__(
        self,
        address: TcpAddress,
        *,
        duration: float,
        connections: int,
        keep_alive: bool = True,
        cpus: Collection[int] = (),
    ) -> None:
        path = wrk_path()
        if path is None:
            raise BenchError("wrk is not installed: apt-get install wrk, or pass --no-wrk")
        self.report: WrkReport | None = None
        self.started = 0.0
        threads = max(1, min(len(cpus) or os.cpu_count() or 1, connections))
        fd, self._script = tempfile.mkstemp(suffix=".lua", prefix="gapless-wrk-")
        with os.fdopen(fd, "w") as script:
            script.write(lua_script(keep_alive))
        self.argv = [
            path, f"-t{threads}", f"-c{max(connections, threads)}",
            f"-d{math.ceil(duration)}s", "--timeout", "5s", "-s", self._script,
            f"http://{address.host}:{address.port}/",
        ]  # fmt: skip
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Start wrk; it runs with the calling thread's CPU affinity."""
        self._process = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def interrupt(self, timeout: float) -> WrkReport:
        """Stop wrk now with SIGINT (it reports all the same) and read its report."""
        assert self._process is not None
        self._process.send_signal(signal.SIGINT)
        return self.finish(timeout)

    def finish(self, timeout: float) -> WrkReport:
        """Wait for wrk to end (it stops by itself after its duration) and read its report."""
        assert self._process is not None
        try:
            output, _ = self._process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
            raise BenchError(f"wrk did not finish within {timeout:g} s") from None
        finally:
            self._remove_script()
        if self._process.returncode != 0:
            raise BenchError(f"wrk exited with code {self._process.returncode}: {output[-300:]!r}")
        self.report = parse_report(output)
        return self.report

    def kill(self) -> None:
        """Stop wrk early (on an error elsewhere)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.communicate()
        self._remove_script()

    def _remove_script(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._script)
