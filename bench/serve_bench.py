"""Figures for gapless serve: throughput beside plain uvicorn, long handover runs.

    .venv/bin/python bench/serve_bench.py throughput [--seconds 8] [--rounds 3]
    .venv/bin/python bench/serve_bench.py slow [--requests 1000]
    .venv/bin/python bench/serve_bench.py reloads [--reloads 20] [--close]

``throughput``: the same app (tests/apps/serve_app.py) under wrk -t1 -c64, in
alternating rounds, served by plain uvicorn on its own port, by plain uvicorn
``--fd 3`` on an inherited socket, and by gapless's runner on an inherited
socket; prints each median and the ratio runner / plain uvicorn, of requests
per second and of the server's CPU time per request (the steadier figure on a
machine busy with other work).
``slow``: N slow requests in flight on generation 1 across a handover; counts
how many complete. ``reloads``: wrk (keep-alive, or ``Connection: close``) and a
prober across N handovers; prints every failure class.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from load import Wrk
from prober import Prober
from serve_harness import (
    APPS,
    Handover,
    head_complete,
    read_until,
    response_complete,
    runner_argv,
    send_requests,
)

PYTHON = sys.executable


@dataclass
class Measure:
    rps: float
    cpu_per_request: float  # the server's CPU seconds per request: robust to a busy machine


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(pid: int, port: int, seconds: int, connections: int = 64) -> Measure:
    before = cpu_seconds(pid)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    used = cpu_seconds(pid) - before
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Socket errors: (.*)", out)
    assert rps and requests, out
    if errors:
        print(f"    wrk socket errors: {errors.group(1)}")
    return Measure(float(rps.group(1)), used / int(requests.group(1)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def plain_uvicorn(seconds: int) -> Measure:
    port = free_port()
    argv = [PYTHON, "-m", "uvicorn", "serve_app:app", "--no-access-log", "--port", str(port)]
    process = subprocess.Popen(argv, cwd=APPS, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        for line in process.stderr:  # uvicorn says when it listens; no notify protocol
            if "Uvicorn running on" in line:
                break
        return measure(process.pid, port, seconds)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def handed(argv: list[str], ready: str, seconds: int) -> Measure:
    with Handover(argv, ready=ready) as handover:
        child = handover.start()
        return measure(child.pid, handover.port, seconds)


def throughput(args: argparse.Namespace) -> None:
    servers = {
        "uvicorn --port": lambda: plain_uvicorn(args.seconds),
        "uvicorn --fd 3": lambda: handed(
            [PYTHON, "-m", "uvicorn", "--fd", "3", "--no-access-log", "serve_app:app"],
            "accept",
            args.seconds,
        ),
        "gapless runner": lambda: handed(runner_argv("serve_app:app"), "notify", args.seconds),
    }
    results: dict[str, list[Measure]] = {name: [] for name in servers}
    for round_ in range(args.rounds):
        for name, run in servers.items():
            result = run()
            results[name].append(result)
            print(
                f"round {round_ + 1}: {name}: {result.rps:.0f} req/s, "
                f"{result.cpu_per_request * 1e6:.0f} us CPU/request",
                flush=True,
            )
    rps = {name: statistics.median(m.rps for m in values) for name, values in results.items()}
    cpu = {
        name: statistics.median(m.cpu_per_request for m in values)
        for name, values in results.items()
    }
    for name in servers:
        print(f"median {name}: {rps[name]:.0f} req/s, {cpu[name] * 1e6:.0f} us CPU/request")
    ratio = rps["gapless runner"] / rps["uvicorn --port"]
    print(f"throughput, gapless runner / plain uvicorn = {ratio:.3f}")
    print(
        "CPU efficiency, plain uvicorn / gapless runner (CPU per request) = "
        f"{cpu['uvicorn --port'] / cpu['gapless runner']:.3f}"
    )


def slow(args: argparse.Namespace) -> None:
    with Handover(runner_argv("serve_app:app")) as handover:
        first = handover.start()
        streaming = send_requests(handover.port, args.requests, f"/stream?ms={args.ms}")
        buffers: dict[socket.socket, bytes] = {}
        read_until(streaming, head_complete, buffers, timeout=60)
        started = time.monotonic()
        handover.start()
        read_until(streaming, response_complete, buffers, timeout=60)
        for sock in streaming:
            sock.close()
        codes = handover.wait_retired()
    complete = sum(
        buffers[sock].startswith(b"HTTP/1.1 200 ") and buffers[sock].endswith(b"pid %d" % first.pid)
        for sock in streaming
    )
    print(f"{complete}/{args.requests} slow requests completed on generation 1 across a handover")
    print(f"handover to last response: {time.monotonic() - started:.2f} s; exit codes {codes}")


def reloads(args: argparse.Namespace) -> None:
    with Handover(runner_argv("serve_app:app")) as handover:
        handover.start()
        wrk = Wrk(handover.port, Path("/tmp"), connections=args.connections, close=args.close)
        prober = Prober(handover.port, threads=2)
        started = time.monotonic()
        handover.handover(args.reloads)
        codes = handover.wait_retired(60)
        elapsed = time.monotonic() - started
        result, probed = wrk.stop(), prober.stop()
    mode = "Connection: close" if args.close else "keep-alive"
    print(f"{args.reloads} handovers in {elapsed:.1f} s, exit codes {set(codes)}")
    print(f"wrk ({mode}): {result.requests} requests, failures {dict(result.failures)}")
    print(f"prober: {probed.requests} requests, failures {dict(probed.failures)}")
    if result.examples:
        print(result.examples[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("throughput")
    bench.add_argument("--seconds", type=int, default=8)
    bench.add_argument("--rounds", type=int, default=3)
    bench = commands.add_parser("slow")
    bench.add_argument("--requests", type=int, default=1000)
    bench.add_argument("--ms", type=int, default=3000)
    bench = commands.add_parser("reloads")
    bench.add_argument("--reloads", type=int, default=20)
    bench.add_argument("--connections", type=int, default=32)
    bench.add_argument("--close", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    {"throughput": throughput, "slow": slow, "reloads": reloads}[args.command](args)


if __name__ == "__main__":
    main()
