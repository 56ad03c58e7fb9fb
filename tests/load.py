"""wrk in the background for tests and figures: every failure it saw, read from a
Lua ``done()`` report rather than wrk's prose (``prober.Prober`` is the other load).

Example::

    with Wrk(port, tmp_path, close=True) as wrk:
        wrk.wait_started()
        ...reloads...
        report = wrk.stop()
    assert report.failed == 0, report.examples
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
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
