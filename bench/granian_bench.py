"""Steady throughput of ``gapless serve --server granian`` against plain granian.

The same minimal ASGI app, served by each in alternating rounds: the server
pinned to CPU 0, ``wrk -t1 -c32`` (keep-alive) pinned to CPU 1, both without
access log, at log level warning, HTTP/1.1. Prints each round and the ratio of
the medians (the issue-12 goal: >= 0.95).

Usage::

    PYTHONPATH=src python bench/granian_bench.py [--rounds 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
"""
READY_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_serving(port: int, process: subprocess.Popen[bytes]) -> None:
    """Until an HTTP request is answered (the bench's readiness check, not a test's)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)  # a bench polling a server up, outside the package and its tests
    raise SystemExit(f"no answer on port {port} in {READY_TIMEOUT} s")


def _commands(port: int) -> dict[str, list[str]]:
    bind = f"127.0.0.1:{port}"
    granian = shutil.which("granian") or str(Path(sys.executable).with_name("granian"))
    return {
        "granian": [
            granian, "--interface", "asgi", "--http", "1", "--no-ws", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--backlog", "1024", "app:app",
        ],
        "gapless": [
            sys.executable, "-m", "gapless.cli", "serve", "app:app", "--server", "granian",
            "--bind", bind, "--no-access-log", "--log-level", "warning",
        ],
    }  # fmt: skip


def _round(name: str, argv: list[str], port: int, cwd: str, seconds: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([cwd, os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(
        ["taskset", "-c", "0", *argv], cwd=cwd, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_serving(port, server)
        out = subprocess.run(
            ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}", f"http://127.0.0.1:{port}/"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors:.*|Non-2xx.*", out)
    print(f"  {name:8} {rate:10,.0f} req/s {errors.group(0) if errors else '0 errors'}")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"granian": [], "gapless": []}
    with tempfile.TemporaryDirectory() as cwd:
        Path(cwd, "app.py").write_text(APP)
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        for number in range(1, args.rounds + 1):
            print(f"round {number}")
            for name in rates:
                port = _free_port()
                argv = _commands(port)[name]
                rates[name].append(_round(name, argv, port, cwd, args.seconds))
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    plain, ours = (statistics.median(rates[name]) for name in ("granian", "gapless"))
    print(f"median: plain granian {plain:,.0f}, gapless serve --server granian {ours:,.0f}")
    print(f"ratio: {ours / plain:.3f}")


if __name__ == "__main__":
    main()
