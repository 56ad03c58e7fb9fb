"""wrk in the background for tests and figures of ``gapless run``: every failure it
saw, read from a Lua ``done()`` report rather than wrk's prose.

Example::

    with Wrk(port, tmp_path, close=True) as wrk:
        wrk.wait_started()
        ...reloads...
    assert wrk.report.failed == 0
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

TIMEOUT = 30.0
WRK = shutil.which("wrk")

# A response() hook (only when a test must know the load has begun) costs wrk some
# speed; the figures leave it out.
_STARTED = """
local started = false
response = function(status, headers, body)
  if not started then
    started = true
    io.write("WRK_STARTED\\n")
    io.stdout:flush()
  end
end
"""
_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "seconds": %.3f, "connect": %d, "read": %d, "write": %d, '
    .. '"timeout": %d, "non_2xx": %d, "p99_ms": %.1f}\\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.timeout,
    e.status, latency:percentile(99) / 1000))
end
"""


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

    @property
    def socket_errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout

    @property
    def failed(self) -> int:
        return self.socket_errors + self.non_2xx

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return (
            f"{self.requests} requests in {self.seconds:.1f} s, socket errors: connect "
            f"{self.connect} read {self.read} write {self.write} timeout {self.timeout}, "
            f"non-2xx {self.non_2xx}, p99 {self.p99_ms} ms"
        )


class Wrk:
    """``wrk -t1`` against 127.0.0.1:``port`` until :meth:`stop` (SIGINT: wrk then
    reports as at its end) or for ``seconds``.

    Args:
        port: where to send.
        script_dir: where to write the Lua script.
        connections: wrk's -c.
        close: send ``Connection: close`` (a new connection per request).
        seconds: how long; None: until stopped.
        announce: print ``WRK_STARTED`` at the first response, for :meth:`wait_started`.
    """

    def __init__(
        self,
        port: int,
        script_dir: Path,
        *,
        connections: int = 8,
        close: bool = True,
        seconds: int | None = None,
        announce: bool = True,
    ) -> None:
        assert WRK is not None, "wrk is not installed (bash scripts/setup.sh as root)"
        script = script_dir / "wrk_report.lua"
        script.write_text((_STARTED if announce else "") + _DONE)
        duration = f"{seconds or 600}s"
        argv = [WRK, "-t1", f"-c{connections}", f"-d{duration}", "--timeout", "10s"]
        argv += ["-s", str(script)]
        if close:
            argv += ["-H", "Connection: close"]
        self.process = subprocess.Popen(
            [*argv, f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True
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
        out, _ = self.process.communicate(timeout=timeout)
        for line in out.splitlines():
            if line.startswith("WRK_JSON "):
                self.report = WrkReport(**json.loads(line[len("WRK_JSON ") :]))
                return self.report
        raise AssertionError(f"wrk printed no report:\n{out}")

    def __enter__(self) -> Wrk:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(TIMEOUT)
