"""``gapless demo``: the demo server under load, upgraded again and again.

This process plays systemd: it opens the listening socket, starts
``python -m gapless.demo`` with it (LISTEN_FDS) and a NOTIFY_SOCKET, and follows
the upgrades the way systemd does for Type=notify-reload: RELOADING=1 from the
serving process, then MAINPID=<successor> and READY=1. Meanwhile client threads
send requests back to back, and one slow request spans every upgrade. Every
request is counted; none may fail.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import select
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TextIO

from .addresses import parse_bind
from .listeners import listener_address, open_listener
from .notify import NotifyReceiver
from .process import Child, spawn

__all__ = ["DemoReport", "run_demo"]

_PR_SET_CHILD_SUBREAPER = 36


@dataclass
class ReloadTiming:
    old_pid: int
    new_pid: int
    ready_ms: float
    old_exit_ms: float


@dataclass
class DemoReport:
    cold_start_ms: float = 0.0
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    slow_ok: int = 0
    latencies: list[float] = field(default_factory=list)
    reloads: list[ReloadTiming] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, latency: float, error: str | None) -> None:
        with self.lock:
            self.requests += 1
            if error is None:
                self.latencies.append(latency)
            else:
                self.failures.append(error)

    @property
    def summary(self) -> str:
        return f"{self.requests} requests, {len(self.failures)} failed, {len(self.reloads)} reloads"


def run_demo(
    *, reloads: int = 10, interval: float = 0.5, clients: int = 4, out: TextIO = sys.stdout
) -> DemoReport:
    """Run the demo: ``reloads`` upgrades ``interval`` seconds apart under load."""
    _become_subreaper()
    report = DemoReport()
    listener = open_listener(parse_bind("127.0.0.1:0"))
    port = listener_address(listener).port  # type: ignore[union-attr]
    with NotifyReceiver() as receiver, _demo_server(listener, receiver) as first:
        started = time.monotonic()
        _wait_for(receiver, lambda f: f.get("READY") == "1", timeout=30.0)
        report.cold_start_ms = (time.monotonic() - first.started) * 1000
        print(
            f"demo server pid {first.pid} ready on 127.0.0.1:{port} "
            f"(cold start {report.cold_start_ms:.0f} ms)",
            file=out,
        )
        stop = threading.Event()
        threads = [
            threading.Thread(target=_client, args=(port, stop, report)) for _ in range(clients)
        ]
        for thread in threads:
            thread.start()
        pid = first.pid
        for number in range(1, reloads + 1):
            stop.wait(interval)
            timing = _reload(pid, port, receiver, report)
            report.reloads.append(timing)
            print(
                f"reload {number:2}: pid {timing.old_pid} -> {timing.new_pid}, "
                f"successor ready after {timing.ready_ms:.0f} ms, "
                f"old process exited after {timing.old_exit_ms:.0f} ms",
                file=out,
            )
            pid = timing.new_pid
        stop.wait(interval)
        stop.set()
        for thread in threads:
            thread.join()
        os.kill(pid, signal.SIGTERM)
        _wait_exit(pid, timeout=30.0)
        elapsed = time.monotonic() - started
    _print_report(report, elapsed, out)
    return report


def _reload(pid: int, port: int, receiver: NotifyReceiver, report: DemoReport) -> ReloadTiming:
    old = os.pidfd_open(pid)
    slow = threading.Thread(target=_slow_request, args=(port, report))
    slow.start()
    try:
        signalled = time.monotonic()
        os.kill(pid, signal.SIGUSR2)
        fields = _wait_for(
            receiver, lambda f: f.get("READY") == "1" and "MAINPID" in f, timeout=60.0
        )
        ready = time.monotonic()
        select.select([old], [], [], 60.0)
        exited = time.monotonic()
    finally:
        os.close(old)
    _reap()
    slow.join()
    return ReloadTiming(
        pid, int(fields["MAINPID"]), (ready - signalled) * 1000, (exited - signalled) * 1000
    )


@contextmanager
def _demo_server(listener: object, receiver: NotifyReceiver) -> Iterator[Child]:
    env = dict(os.environ, NOTIFY_SOCKET=receiver.address)
    argv = [sys.executable, "-m", "gapless.demo", "--quiet", "--bind", "demo=127.0.0.1:0"]
    child = spawn(argv, listeners=[listener], names=["demo"], env=env)  # type: ignore[list-item]
    try:
        yield child
    finally:
        with suppress(OSError):
            child.send_signal(signal.SIGKILL)  # a pidfd: harmless once it is gone
        child.close()
        _reap()


def _wait_for(receiver: NotifyReceiver, accept: object, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([receiver], [], [], remaining)[0]:
            break
        message = receiver.receive()
        if message is not None and accept(dict(message.fields)):  # type: ignore[operator]
            return dict(message.fields)
    raise TimeoutError(f"the demo server sent no expected notification within {timeout:g} s")


def _wait_exit(pid: int, timeout: float) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    _reap()


def _client(port: int, stop: threading.Event, report: DemoReport) -> None:
    while not stop.is_set():
        report.record(*_request(port, "/"))


def _slow_request(port: int, report: DemoReport) -> None:
    latency, error = _request(port, "/?duration=300ms")
    report.record(latency, error)
    if error is None:
        with report.lock:
            report.slow_ok += 1


def _request(port: int, path: str) -> tuple[float, str | None]:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        error = None if response.status == 200 else f"status {response.status}"
    except (OSError, http.client.HTTPException) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()
    return time.monotonic() - started, error


def _print_report(report: DemoReport, elapsed: float, out: TextIO) -> None:
    ready = [r.ready_ms for r in report.reloads]
    if ready:
        print(
            f"successor ready after a signal: median {statistics.median(ready):.0f} ms, "
            f"max {max(ready):.0f} ms (the demo's cold start alone: {report.cold_start_ms:.0f} ms)",
            file=out,
        )
    if report.latencies:
        latencies = sorted(report.latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(
            f"latency p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; "
            f"{report.slow_ok} slow requests spanning a reload completed; "
            f"{report.requests / elapsed:.0f} requests/s",
            file=out,
        )
    for failure in report.failures[:10]:
        print(f"failed: {failure}", file=out)
    print(report.summary, file=out)


def _become_subreaper() -> None:
    """Orphaned old generations become our children, so we can reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
