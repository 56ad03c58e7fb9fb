"""Sweep: handoff time against the number of listening sockets, under ``gapless run``.

For each count N, ``gapless run --ready notify`` holds N TCP listeners (127.0.0.1,
free ports) and runs a minimal generation that sends READY=1 as soon as it starts.
Each ``gapless reload`` is timed from the request on the control socket to its
answer, which comes once the new generation is READY: the handoff time. The table
gives the median and max over the reloads, and the median's ratio to N = 1, so
the cost of passing N sockets (LISTEN_FDS, inheritance, bookkeeping) shows apart
from the interpreter's cold start, which every row pays alike.

    .venv/bin/python bench/sweep_listeners.py                      # 1 10 100 1000, 20 reloads
    .venv/bin/python bench/sweep_listeners.py --counts 1 100 --reloads 20
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from gapless.bench.notifications import DiscardingReader, wait_notification
from gapless.run.control import call
from gapless.systemd.notify_receiver import NotifyReceiver

# A generation: tell the manager it is ready, then wait for TERM (the default action).
GENERATION = (
    "import os, signal, socket\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    "a = os.environ['NOTIFY_SOCKET']\n"
    "s.sendto(b'READY=1', '\\0' + a[1:] if a.startswith('@') else a)\n"
    "signal.pause()\n"
)


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def handoff_times(count: int, reloads: int, timeout: float) -> list[float]:
    """Start ``gapless run`` with ``count`` listeners; time ``reloads`` reloads, in ms."""
    directory = tempfile.mkdtemp(prefix="gapless-sweep-")
    control = os.path.join(directory, "control.sock")
    binds = [arg for i in range(count) for arg in ("--bind", f"l{i}=127.0.0.1:0")]
    argv = [sys.executable, "-m", "gapless.cli", "run", "--ready", "notify", "--control", control]
    receiver = NotifyReceiver()
    manager = subprocess.Popen(
        [*argv, *binds, "--", sys.executable, "-c", GENERATION],
        env={**os.environ, "NOTIFY_SOCKET": receiver.address},
        stderr=subprocess.DEVNULL,  # the manager's log: one line per event
        start_new_session=True,
    )
    reader = None
    try:
        wait_notification(receiver, lambda n: n.ready and n.pid == manager.pid, timeout, list)
        reader = DiscardingReader(receiver)
        times = []
        for _ in range(reloads):
            started = time.monotonic()
            answer = call(control, "reload", timeout=timeout)
            times.append((time.monotonic() - started) * 1000)
            if not answer.get("ok"):
                raise SystemExit(f"reload failed with {count} listeners: {answer}")
        call(control, "stop", timeout=timeout)
        manager.wait(timeout)
        return times
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(manager.pid, signal.SIGKILL)  # anything left of a failed run
        manager.wait(timeout)
        if reader is not None:
            reader.close()
        else:
            receiver.close()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    raise_nofile(max(args.counts) * 3 + 256)
    print("listeners  reloads  median ms  max ms  median / 1 listener")
    base = None
    for count in [1, *[c for c in args.counts if c != 1]]:
        times = handoff_times(count, args.reloads, args.timeout)
        median = statistics.median(times)
        base = base or median
        if count in args.counts:
            row = f"{count:9}  {len(times):7}  {median:9.0f}  {max(times):6.0f}"
            print(f"{row}  {median / base:19.2f}")


if __name__ == "__main__":
    main()
