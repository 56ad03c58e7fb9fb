"""The steady-state overhead of ``gapless serve`` against plain uvicorn, in one run.

    .venv/bin/python bench/overhead.py [--rounds 5] [--seconds 8] [--connections 32]
        [--app gapless.bench.apps:asgi] [--http httptools] [--baseline SRC]
    .venv/bin/python bench/overhead.py --micro [--requests 20000] [--rounds 9]

Alternating rounds (the order swaps each round so that neither server always
runs on a machine warmed by the other) of:

* plain ``uvicorn APP --port P --no-access-log --log-level info --http H
  --loop asyncio``;
* ``gapless serve APP --bind 127.0.0.1:P --no-access-log --log-level warning
  --http H`` (manager and generation), whose uvicorn loop is asyncio's too.

With ``--baseline SRC`` (say, ``git archive`` of an older commit's ``src``
unpacked), a third server in each round: ``gapless serve`` imported from SRC,
for a before/after comparison in the same run.

The server's process tree is pinned to CPU 0 and ``wrk -t1`` (keep-alive) to
CPU 1. Each round warms up for one second before it measures. Prints each
round, the medians, the ratio gapless / uvicorn of requests per second and of
the server's CPU time per request (for gapless: the generation's, the
manager's printed apart), both of the medians and as the median of each
round's ratio (the steadier one when the machine's speed drifts), and the load
average before and after. ``--micro``: the same comparison in one process
without sockets (uvicorn's httptools protocol on a stand-in transport, the
minimal app, alternating rounds): the CPU gapless adds per request, free of
the kernel's share and steadier on a busy machine. Any wrk error (socket errors, non-2xx) is printed
with its round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from lines import Lines
from manager_harness import Manager, gapless_argv
from serve_bench import cpu_seconds, free_port
from serve_harness import APPS

PYTHON = sys.executable
SERVER_CPU, LOAD_CPU = "0", "1"
WARMUP_SECONDS = 1


@dataclass
class Round:
    rps: float
    cpu_per_request: float  # the serving process's CPU seconds per request
    other_cpu: float = 0.0  # the manager's CPU seconds in the same time (gapless only)
    errors: str = ""  # wrk's error lines, if any


@dataclass
class Server:
    """A server started for one round: the process that serves, and its port."""

    pid: int
    port: int
    manager_pid: int | None = None


def pinned(cpu: str, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv]


def wrk(port: int, seconds: int, connections: int) -> tuple[float, int, str]:
    """Requests per second, requests and wrk's error lines, from wrk pinned to
    the load CPU."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"]
    out = subprocess.run(pinned(LOAD_CPU, argv), capture_output=True, text=True, check=True)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    requests = re.search(r"(\d+) requests in", out.stdout)
    assert rps and requests, out.stdout
    errors = re.findall(r"(Socket errors: .*|Non-2xx .*)", out.stdout)
    return float(rps.group(1)), int(requests.group(1)), "; ".join(errors)


def measure(server: Server, args: argparse.Namespace) -> Round:
    wrk(server.port, WARMUP_SECONDS, args.connections)
    manager_before = cpu_seconds(server.manager_pid) if server.manager_pid else 0.0
    before = cpu_seconds(server.pid)
    rps, requests, errors = wrk(server.port, args.seconds, args.connections)
    used = cpu_seconds(server.pid) - before
    manager = cpu_seconds(server.manager_pid) - manager_before if server.manager_pid else 0.0
    return Round(rps, used / requests, manager, errors)


@contextmanager
def uvicorn(args: argparse.Namespace) -> Iterator[Server]:
    """Plain uvicorn on its own port, with gapless's parser and loop.

    Its log level is info, not warning, only so that it says when it listens
    (it has no other readiness signal): per request uvicorn consults only
    whether its logger is at TRACE and whether the access log is on, both the
    same at info and warning, so this costs nothing per request.
    """
    port = free_port()
    argv = [PYTHON, "-m", "uvicorn", args.app, "--port", str(port), "--no-access-log"]
    argv += ["--log-level", "info", "--http", args.http, "--loop", "asyncio"]
    process = subprocess.Popen(
        pinned(SERVER_CPU, argv), cwd=APPS, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    lines = Lines(process.stderr)
    try:
        lines.wait_line(r"Uvicorn running on")
        yield Server(process.pid, port)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)


@contextmanager
def gapless(args: argparse.Namespace, src: str | None = None) -> Iterator[Server]:
    """``gapless serve`` (manager and generation) on a port of its own, imported
    from ``src`` when given."""
    env = {**os.environ, "PYTHONPATH": src} if src else None
    with tempfile.TemporaryDirectory() as tmp:
        control = str(Path(tmp) / "control.sock")
        argv = gapless_argv("serve", args.app, "--no-access-log", "--log-level", "warning")
        argv += ["--http", args.http, "--control", control, "--bind", f"127.0.0.1:{free_port()}"]
        process = subprocess.Popen(
            pinned(SERVER_CPU, argv), cwd=APPS, stderr=subprocess.PIPE, text=True, env=env
        )
        manager = Manager(process, control)
        manager.start_reader()
        try:
            manager.wait_line(r"generation 1 ready after")
            child = manager.status()["generations"][0]["pid"]
            yield Server(child, manager.port, process.pid)
        finally:
            process.terminate()
            manager.wait(60)


def run_rounds(args: argparse.Namespace) -> dict[str, list[Round]]:
    servers: dict[str, Callable[[], AbstractContextManager[Server]]] = {
        "uvicorn": lambda: uvicorn(args),
        "gapless serve": lambda: gapless(args),
    }
    if args.baseline:
        servers["gapless serve (baseline)"] = lambda: gapless(args, args.baseline)
    results: dict[str, list[Round]] = {name: [] for name in servers}
    for index in range(args.rounds):
        names = list(servers)
        shift = index % len(names)  # each round starts one server further on
        for name in names[shift:] + names[:shift]:
            with servers[name]() as server:
                result = measure(server, args)
            results[name].append(result)
            extra = f", manager {result.other_cpu:.3f} s CPU" if name != "uvicorn" else ""
            extra += f"; wrk: {result.errors}" if result.errors else ""
            print(
                f"round {index + 1}: {name}: {result.rps:.0f} req/s, "
                f"{result.cpu_per_request * 1e6:.1f} us CPU/request{extra}",
                flush=True,
            )
    return results


def report(results: dict[str, list[Round]]) -> None:
    base = results["uvicorn"]
    for name, rounds in results.items():
        rps = statistics.median(r.rps for r in rounds)
        cpu = statistics.median(r.cpu_per_request for r in rounds)
        print(f"median {name}: {rps:.0f} req/s, {cpu * 1e6:.1f} us CPU/request")
    for name, rounds in results.items():
        if name == "uvicorn":
            continue
        rps = statistics.median(r.rps for r in rounds) / statistics.median(r.rps for r in base)
        cpu = statistics.median(r.cpu_per_request for r in base) / statistics.median(
            r.cpu_per_request for r in rounds
        )
        paired_rps = statistics.median(r.rps / b.rps for r, b in zip(rounds, base, strict=True))
        paired_cpu = statistics.median(
            b.cpu_per_request / r.cpu_per_request for r, b in zip(rounds, base, strict=True)
        )
        print(
            f"{name} / uvicorn: req/s {rps:.3f} (median of rounds' ratios {paired_rps:.3f}); "
            f"CPU efficiency {cpu:.3f} (median of rounds' ratios {paired_cpu:.3f})"
        )


class _Transport(asyncio.Transport):
    """What uvicorn's protocol asks of a transport; writes go nowhere."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass  # the keep-alive expiry of a round that ended

    def get_extra_info(self, name: str, default: object = None) -> object:
        addresses = {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}
        return addresses.get(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol


def _protocol(kind: str) -> Any:
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from gapless.bench.apps import asgi
    from gapless.integrations.common import CloseWhenDraining, DrainFlag
    from gapless.integrations.limits import HeadSizeLimit
    from gapless.integrations.uvicorn import _bare
    from gapless.integrations.uvicorn_http import DrainState, http_protocol

    settings = {"interface": "asgi3", "loop": "asyncio", "access_log": False}
    if kind == "uvicorn":
        config = uvicorn.Config(asgi, http=HttpToolsProtocol, **settings)
        config.load()
        return HttpToolsProtocol(config, ServerState(), {})
    flag = DrainFlag()  # as serve_asgi() builds it
    guarded = CloseWhenDraining(HeadSizeLimit(asgi, 16384), flag)
    protocol = http_protocol("httptools")
    config = uvicorn.Config(guarded, http=protocol, **settings)
    config.load()
    protocol.fast_app = _bare(config.loaded_app, guarded, asgi)
    return protocol(config, DrainState(flag), {})


async def _micro_round(kind: str, requests: int) -> float:
    """CPU seconds per request of one protocol answering ``requests`` in turn."""
    protocol = _protocol(kind)
    transport = protocol.transport = _Transport()
    transport.protocol = protocol
    protocol.connection_made(transport)
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
    started = 0.0
    for index in range(requests + 200):  # the first 200 warm up
        if index == 200:
            started = time.process_time()
        protocol.data_received(request)
        for _ in range(2):  # the app's task runs, then its response completes
            await asyncio.sleep(0)
    used = time.process_time() - started
    protocol.connection_lost(None)
    return used / requests


def micro(args: argparse.Namespace) -> None:
    results: dict[str, list[float]] = {"uvicorn": [], "gapless serve": []}
    for index in range(args.rounds):
        for kind in list(results)[:: 1 if index % 2 == 0 else -1]:  # swapped each round
            results[kind].append(asyncio.run(_micro_round(kind, args.requests)))
    plain, ours = (statistics.median(results[kind]) for kind in results)
    paired = statistics.median(
        a / b for a, b in zip(results["uvicorn"], results["gapless serve"], strict=True)
    )
    print(f"uvicorn {plain * 1e6:.2f} us/request, gapless serve {ours * 1e6:.2f} us/request")
    print(
        f"gapless adds {(ours - plain) * 1e6:.2f} us/request; uvicorn / gapless {plain / ours:.3f}"
    )
    print(f"(median of the rounds' ratios {paired:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--app", default="gapless.bench.apps:asgi")
    parser.add_argument("--http", default="httptools", choices=("httptools", "h11"))
    parser.add_argument("--baseline", metavar="SRC", help="also gapless serve from this src")
    parser.add_argument("--micro", action="store_true", help="in one process, no sockets")
    parser.add_argument("--requests", type=int, default=20000, help="per --micro round")
    args = parser.parse_args()
    if args.micro:
        micro(args)
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    report(run_rounds(args))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
