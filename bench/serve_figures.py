"""Figures for docs/serve.md, measured through the ``gapless serve`` command itself.

    .venv/bin/python bench/serve_figures.py throughput [--seconds 8] [--rounds 3]
    .venv/bin/python bench/serve_figures.py latency [--reloads 10] [--connections 16]
    .venv/bin/python bench/serve_figures.py reload [--times 5]

``throughput``: tests/apps/serve_app.py under wrk -t1 -c64, in alternating
rounds, served by plain ``uvicorn --port`` and by ``gapless serve``; prints the
medians and their ratio (requests per second, and the server's CPU time per
request, the steadier figure on a busy machine).
``latency``: ``gapless serve`` under a steady keep-alive load from an asyncio
client (each connection sends its next request when the last is answered),
``--reloads`` reloads one second apart; a reload window runs from the reload
request to the old generation's exit. Prints the p50/p99 of requests started
inside the windows and outside, their ratio, and every failure.
``reload``: the app's cold start (``python -m uvicorn`` from exec to "Application
startup complete") beside ``gapless reload`` (the command's wall time) and the
generation's own start (exec to READY=1, as the manager logs it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from manager_harness import Manager, gapless_argv
from serve_bench import Measure, free_port, measure, plain_uvicorn
from serve_harness import APPS

from gapless.run.control import call

PYTHON = sys.executable


@contextmanager
def gapless_serve(*args: str) -> Iterator[Manager]:
    """``gapless serve serve_app:app`` on a free port; waits for generation 1."""
    with tempfile.TemporaryDirectory() as tmp:
        control = str(Path(tmp) / "control.sock")
        argv = gapless_argv("serve", "serve_app:app", "--no-access-log", "--control", control)
        process = subprocess.Popen(
            [*argv, "--bind", f"127.0.0.1:{free_port()}", *args],
            cwd=APPS,
            stderr=subprocess.PIPE,
            text=True,
        )
        manager = Manager(process, control)
        manager.start_reader()
        try:
            manager.wait_line(r"generation 1 ready after")
            yield manager
        finally:
            process.terminate()
            manager.wait(60)


def throughput(args: argparse.Namespace) -> None:
    results: dict[str, list[Measure]] = {"uvicorn": [], "gapless serve": []}
    for round_ in range(args.rounds):
        results["uvicorn"].append(plain_uvicorn(args.seconds))
        with gapless_serve() as manager:
            child = manager.status()["generations"][0]["pid"]
            results["gapless serve"].append(measure(child, manager.port, args.seconds))
        for name, values in results.items():
            print(f"round {round_ + 1}: {name}: {values[-1].rps:.0f} req/s", flush=True)
    rps = {name: statistics.median(m.rps for m in ms) for name, ms in results.items()}
    cpu = {name: statistics.median(m.cpu_per_request for m in ms) for name, ms in results.items()}
    for name in results:
        print(f"median {name}: {rps[name]:.0f} req/s, {cpu[name] * 1e6:.1f} us CPU/request")
    print(f"throughput, gapless serve / uvicorn = {rps['gapless serve'] / rps['uvicorn']:.3f}")
    print(f"CPU per request, uvicorn / gapless serve = {cpu['uvicorn'] / cpu['gapless serve']:.3f}")


class Load:
    """Keep-alive clients in an asyncio loop of their own thread, timing each request."""

    def __init__(self, port: int, connections: int) -> None:
        self.port = port
        self.samples: list[tuple[float, float]] = []  # (start, seconds)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(connections),))
        self._thread.start()

    async def _run(self, connections: int) -> None:
        await asyncio.gather(*(self._client() for _ in range(connections)))

    async def _client(self) -> None:
        request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
        reader = writer = None
        while not self._stop.is_set():
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            assert reader is not None
            start = time.monotonic()
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError) as exc:
                self.failures.append(repr(exc))
                writer.close()
                writer = None
                continue
            self.samples.append((start, time.monotonic() - start))
            if re.search(rb"(?i)connection: *close", head):
                writer.close()
                writer = None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def latency(args: argparse.Namespace) -> None:
    with gapless_serve() as manager:
        load = Load(manager.port, args.connections)
        windows = []
        time.sleep(2.0)  # pacing: steady-state samples before the first reload, not a sync
        for number in range(2, args.reloads + 2):
            started = time.monotonic()
            answer = call(manager.control, "reload", timeout=60)
            assert answer["ok"], answer
            manager.wait_line(rf"generation {number - 1} \(pid \d+\) exited", timeout=60)
            windows.append((started, time.monotonic()))
            time.sleep(1.0)  # spacing between reloads, so steady samples lie between them
        load.stop()
    inside = [s for t, s in load.samples if any(a <= t <= b for a, b in windows)]
    outside = [s for t, s in load.samples if not any(a <= t <= b for a, b in windows)]
    for name, values in (("reload windows", inside), ("steady state", outside)):
        q = statistics.quantiles(values, n=100)
        print(f"{name}: {len(values)} requests, p50 {q[49] * 1e3:.2f} ms, p99 {q[98] * 1e3:.2f} ms")
    ratio = statistics.quantiles(inside, n=100)[98] / statistics.quantiles(outside, n=100)[98]
    print(f"p99 in reload windows / steady p99 = {ratio:.2f}")
    print(f"failures: {len(load.failures)} {load.failures[:3]}")


def reload(args: argparse.Namespace) -> None:
    cold = []
    for _ in range(args.times):
        port = str(free_port())
        started = time.monotonic()
        argv = [PYTHON, "-m", "uvicorn", "serve_app:app", "--port", port, "--no-access-log"]
        process = subprocess.Popen(argv, cwd=APPS, stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        for line in process.stderr:
            if "Application startup complete" in line:
                break
        cold.append(time.monotonic() - started)
        process.terminate()
        process.wait(30)
    reloads, starts = [], []
    with gapless_serve() as manager:
        for number in range(2, args.times + 2):
            started = time.monotonic()
            answer = call(manager.control, "reload", timeout=60)
            reloads.append(time.monotonic() - started)
            assert answer["ok"], answer
            ready = manager.wait_line(rf"generation {number} ready after (\d+) ms")
            starts.append(int(ready.group(1)) / 1000)
    for name, values in (
        ("cold start, plain uvicorn (exec to startup complete)", cold),
        ("gapless serve generation (exec to READY=1)", starts),
        ("gapless reload (command wall time)", reloads),
    ):
        print(f"{name}: median {statistics.median(values) * 1e3:.0f} ms")
    print(
        "gapless's own overhead (reload - cold start) = "
        f"{(statistics.median(reloads) - statistics.median(cold)) * 1e3:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("throughput")
    sub.add_argument("--seconds", type=int, default=8)
    sub.add_argument("--rounds", type=int, default=3)
    sub = commands.add_parser("latency")
    sub.add_argument("--reloads", type=int, default=10)
    sub.add_argument("--connections", type=int, default=16)
    sub = commands.add_parser("reload")
    sub.add_argument("--times", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    {"throughput": throughput, "latency": latency, "reload": reload}[args.command](args)


if __name__ == "__main__":
    main()
