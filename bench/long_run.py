"""Many consecutive reloads of ``gapless run`` under load: nothing lost, nothing leaks.

    .venv/bin/python bench/long_run.py [--reloads 1000] [--every 100] [--probers 4] [--json]

Starts ``gapless run`` with the demo server (``python -m gapless.demo``) as its
child, keeps ``--probers`` threads sending requests (a new connection each), and
reloads it ``--reloads`` times in a row, each reload waiting until the new
generation is ready (``gapless reload``). Every ``--every`` reloads, once the old
generation is gone, it samples the manager: open fds, RSS and zombie children.

Prints one line per sample and a verdict; ``--json`` prints one JSON object per
sample and a final summary object instead (tests/run/test_faults_long.py reads it).
Exit status: 0 if no request failed and fds and zombies did not grow from the
first sample to the last, else 1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gapless.run.control import call

TIMEOUT = 30.0


@dataclass
class Sample:
    reloads: int
    fds: int
    rss_kb: int
    zombies: int
    answered: int
    failures: int
    seconds: float


class Probers:
    """Threads that GET / again and again on new connections, counting failures."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.answered = 0
        self.failures: list[str] = []
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(TIMEOUT)

    def _run(self) -> None:
        while not self._done.is_set():
            error = _get(self.port)
            with self._lock:
                if error is None:
                    self.answered += 1
                else:
                    self.failures.append(error)


def _get(port: int) -> str | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        return None if response.status == 200 else f"HTTP {response.status}"
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()


class StatusLine:
    """One control connection kept open, so that asking for the status adds no fd."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(TIMEOUT)
        self._sock.connect(path)
        self._lines = self._sock.makefile("rb")

    def status(self) -> dict[str, Any]:
        self._sock.sendall(b'{"v": 1, "cmd": "status"}\n')
        answer: dict[str, Any] = json.loads(self._lines.readline())
        return answer

    def close(self) -> None:
        self._lines.close()
        self._sock.close()


def sample_manager(pid: int) -> tuple[int, int, int]:
    """The manager's open fds, RSS in kB, and zombie children, from /proc."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return fds, rss, len(zombie_children(pid))


def zombie_children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = stat.rpartition(b")")[2].split()
        if fields[0] == b"Z" and fields[1] == b"%d" % pid:
            found.append(int(name))
    return found


def wait_exit(pid: int) -> None:
    """Wait on a pidfd until ``pid`` has exited; fail loudly after TIMEOUT."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not select.select([fd], [], [], TIMEOUT)[0]:
            raise SystemExit(f"generation pid {pid} still runs {TIMEOUT} s after its drain began")
    finally:
        os.close(fd)


def settle(status: StatusLine, old_pid: int | None) -> None:
    """Return once the manager has reaped the old generation and forgotten it.

    The old leader's exit makes the manager's pidfd readable no later than ours;
    the first status request is read in that select round or a later one, and the
    second in a round after it, so by its answer the exit has been handled.
    """
    # Every earlier generation was gone at the previous sample or drained before
    # this one's drain began: waiting for the last one is waiting for all.
    if old_pid is not None:
        wait_exit(old_pid)
    status.status()
    live = status.status()["generations"]
    if len(live) != 1:
        raise SystemExit(f"expected one live generation after the drain, got {live}")


class ManagerLog(threading.Thread):
    """Reads the manager's stderr: keeps its tail, tells when generation 1 serves."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.tail: list[str] = []
        self.port: int | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.tail = [*self.tail[-199:], line.rstrip("\n")]
            if self.port is None and (match := re.search(r"listening on [\d.]+:(\d+)", line)):
                self.port = int(match.group(1))
            if "generation 1 ready" in line:
                self.ready.set()
        self.ready.set()  # EOF: the manager ended; the caller sees no port


def start_manager(workdir: Path) -> tuple[subprocess.Popen[str], ManagerLog, str]:
    control = str(workdir / "control.sock")
    demo = [sys.executable, "-m", "gapless.demo", "--quiet", "--bind", "web=127.0.0.1:0"]
    argv = [sys.executable, "-m", "gapless.cli", "run", "--control", control]
    argv += ["--bind", "web=127.0.0.1:0", "--drain-timeout", "10", "--", *demo]
    process = subprocess.Popen(
        argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=workdir, text=True
    )
    log = ManagerLog(process)
    log.start()
    if not log.ready.wait(TIMEOUT) or log.port is None or process.poll() is not None:
        process.kill()
        raise SystemExit("the manager did not start:\n" + "\n".join(log.tail))
    return process, log, control


def run(reloads: int, every: int, probers: int, emit: Any) -> tuple[list[Sample], list[str]]:
    """Reload ``reloads`` times under load; emit a sample every ``every`` reloads."""
    with tempfile.TemporaryDirectory(prefix="gapless-long-") as workdir:
        process, log, control = start_manager(Path(workdir))
        assert log.port is not None
        load = Probers(log.port, probers)
        status = StatusLine(control)
        samples: list[Sample] = []
        began = time.monotonic()
        try:
            load.start()
            old_pid: int | None = None
            for done in range(reloads + 1):
                if done % every == 0 or done == reloads:
                    settle(status, old_pid)
                    fds, rss, zombies = sample_manager(process.pid)
                    elapsed = round(time.monotonic() - began, 1)
                    answered, failed = load.answered, len(load.failures)
                    sample = Sample(done, fds, rss, zombies, answered, failed, elapsed)
                    samples.append(sample)
                    emit(sample)
                if done == reloads:
                    break
                live = status.status()["generations"]
                old_pid = next(g["pid"] for g in live if g["state"] == "active")
                answer = call(control, "reload", timeout=TIMEOUT)
                if not answer.get("ok"):
                    tail = "\n".join(log.tail)
                    raise SystemExit(f"reload {done + 1} failed: {answer}\n{tail}")
        finally:
            load.stop()
            status.close()
            call(control, "stop", timeout=TIMEOUT)
            process.wait(TIMEOUT)
    return samples, load.failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100, help="reloads between two samples")
    parser.add_argument("--probers", type=int, default=4, help="client threads")
    parser.add_argument("--json", action="store_true", help="JSON lines, for scripts")
    args = parser.parse_args()

    def emit(sample: Sample) -> None:
        if args.json:
            print(json.dumps(asdict(sample)), flush=True)
        else:
            print(
                f"{sample.reloads:>6} reloads  fds {sample.fds:>3}  rss {sample.rss_kb:>6} kB  "
                f"zombies {sample.zombies}  answered {sample.answered:>7}  "
                f"failed {sample.failures}  ({sample.seconds} s)",
                flush=True,
            )

    samples, failures = run(args.reloads, args.every, args.probers, emit)
    first, last = samples[1] if len(samples) > 1 else samples[0], samples[-1]
    flat = last.fds <= first.fds and last.zombies == 0
    summary = {
        "reloads": args.reloads,
        "answered": last.answered,
        "failures": failures[:10],
        "failed": len(failures),
        "fds_first": first.fds,
        "fds_last": last.fds,
        "rss_kb_first": first.rss_kb,
        "rss_kb_last": last.rss_kb,
        "flat": flat,
    }
    if args.json:
        print(json.dumps({"summary": summary}), flush=True)
    else:
        print(json.dumps(summary, indent=2))
    return 0 if flat and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
