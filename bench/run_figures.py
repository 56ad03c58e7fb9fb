"""Figures for ``gapless run`` (docs/run.md): what the manager costs.

    .venv/bin/python bench/run_figures.py [--reloads 20] [--idle 10] [--seconds 10] [--rounds 3]
    .venv/bin/python bench/run_figures.py servers [--reloads 10]

The first form prints one table:

* the manager's RSS (``VmRSS`` of /proc/<pid>/status) once generation 1 is ready,
  and after ``--reloads`` reloads;
* its wakeups over ``--idle`` idle seconds, starting 1 s after the last old
  generation exited: voluntary plus involuntary context switches of all its
  threads, before and after (zero by design: it sleeps in ``select()`` with no
  timeout);
* reload overhead: the time from the reload request to its answer (the new
  generation ready) minus the child's cold start (spawn to READY=1, the same child
  started directly), measured in alternation, 10 times; and the same time minus
  that generation's own spawn to READY=1 as the manager measured it, which leaves
  out the noise of two different starts; medians;
* throughput of uvicorn (tests/apps/run_app.py) under ``gapless run`` divided by
  the same uvicorn run directly, on its own port and on a socket opened for it
  (``--fd N``, as under gapless): wrk -t1 -c32, keep-alive,
  ``--seconds`` each, alternating, ``--rounds`` times, the server pinned to CPU 0
  and wrk to CPU 1. On a machine shared with other work req/s swing from round to
  round, so the CPU time uvicorn spent per request (utime + stime from
  /proc/<pid>/stat) is compared too, and the manager's own CPU time meanwhile.

``servers`` reloads each server of tests/run_servers.py ``--reloads`` times under
the prober and wrk (``Connection: close``) and prints what the clients saw.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from load import WRK, Wrk
from manager_harness import Manager, app, running
from run_servers import BIN, ENV, SERVERS, reload_under_load, wait_drained

from gapless.run.control import call
from gapless.systemd.notify_receiver import NotifyReceiver

READY_CHILD = app("run_ready.py")
UVICORN = [str(BIN / "uvicorn"), "--no-access-log", "run_app:asgi"]


@contextmanager
def manager(command: list[str], *options: str) -> Iterator[Manager]:
    with (
        tempfile.TemporaryDirectory(prefix="gapless-fig-") as tmp,
        running(Path(tmp), command, *options, env=ENV) as started,
    ):
        yield started


def proc_status(pid: int, field: str) -> int:
    """A number from /proc/<pid>/status (kB for memory), summed over its threads."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as file:
            for line in file:
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
                    if field.startswith("Vm"):
                        return total  # memory is the process's, not per thread
    return total


def switches(pid: int) -> int:
    return proc_status(pid, "voluntary_ctxt_switches") + proc_status(
        pid, "nonvoluntary_ctxt_switches"
    )


def memory_and_wakeups(reloads: int, idle: float) -> dict[str, str]:
    with manager(READY_CHILD, "--ready", "notify") as running_manager:
        pid = running_manager.process.pid
        rss_idle = proc_status(pid, "VmRSS")
        for _ in range(reloads):
            assert running_manager.call("reload")["ok"]
        wait_drained(running_manager, range(1, reloads + 1))
        rss_after = proc_status(pid, "VmRSS")
        # The last exit still has the manager reap it and read its stderr's EOF: let
        # that settle, then count. (The sleeps are the windows measured, not waits.)
        time.sleep(1.0)
        before = switches(pid)
        time.sleep(idle)
        woken = switches(pid) - before
    return {
        "manager RSS, generation 1 ready": f"{rss_idle / 1024:.1f} MiB",
        f"manager RSS after {reloads} reloads": f"{rss_after / 1024:.1f} MiB",
        f"manager wakeups in {idle:g} idle seconds": str(woken),
    }


def cold_start() -> float:
    """Spawn to READY=1 of the ready child started directly, in seconds."""
    with NotifyReceiver() as receiver:
        env = {**ENV, "NOTIFY_SOCKET": receiver.address}
        start = time.monotonic()
        child = subprocess.Popen(READY_CHILD, env=env)
        try:
            while True:
                if not select.select([receiver], [], [], 30)[0]:
                    raise RuntimeError("the ready child sent no READY=1 in 30 s")
                note = receiver.receive()
                if note is not None and note.ready and note.pid == child.pid:
                    return time.monotonic() - start
        finally:
            child.kill()
            child.wait()


def reload_overhead(count: int = 10) -> dict[str, str]:
    reloads, colds, own = [], [], []
    with manager(READY_CHILD, "--ready", "notify") as running_manager:
        first = next(line for line in running_manager.lines if "generation 1 ready" in line)
        first = first.split("ready after ")[1].split()[0]
        for _ in range(count):
            colds.append(cold_start())
            start = time.monotonic()
            answer = call(running_manager.control, "reload", timeout=60)
            reloads.append(time.monotonic() - start)
            assert answer["ok"], answer
            own.append(_ready_latency(running_manager, answer["generation"]))
    return {
        "child cold start, spawn to READY=1 (generation 1; direct, median)": (
            f"{first} ms; {_ms(statistics.median(colds))}"
        ),
        f"reload request to ready (median of {count})": _ms(statistics.median(reloads)),
        "reload overhead = reload - direct cold start (median)": _spread(
            [reload - cold for reload, cold in zip(reloads, colds, strict=True)]
        ),
        "reload - that generation's own spawn to READY=1 (median)": _spread(
            [reload - latency for reload, latency in zip(reloads, own, strict=True)]
        ),
    }


def _ready_latency(running_manager: Manager, generation: int) -> float:
    for gen in running_manager.status()["generations"]:
        if gen["generation"] == generation:
            return float(gen["ready_latency"])
    raise AssertionError(f"generation {generation} is not in the status")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _spread(values: list[float]) -> str:
    return f"{_ms(statistics.median(values))} (min {_ms(min(values))}, max {_ms(max(values))})"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def on_cpu(cpu: int) -> Iterator[None]:
    """Processes started inside run on ``cpu`` only (affinity is inherited)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass
class Round:
    """One wrk run: requests per second, and the CPU the server and the manager used."""

    rate: float
    server_cpu_per_request: float  # seconds
    manager_cpu: float = 0.0  # seconds, during the run


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(port: int, server: int, manager_pid: int | None, seconds: int, tmp: Path) -> Round:
    with on_cpu(1):  # the server on CPU 0, wrk on CPU 1, in both set-ups alike
        wrk = Wrk(port, tmp, connections=32, close=False, seconds=seconds, count_responses=False)
    server_before = cpu_seconds(server)
    manager_before = cpu_seconds(manager_pid) if manager_pid else 0.0
    with wrk:
        report = wrk.wait(timeout=seconds + 30)
    assert report.failed == 0, f"wrk saw failures: {report}"
    server_cpu = cpu_seconds(server) - server_before
    manager_cpu = cpu_seconds(manager_pid) - manager_before if manager_pid else 0.0
    return Round(report.rate, server_cpu / max(report.requests, 1), manager_cpu)


def direct_round(seconds: int, tmp: Path, by_fd: bool) -> Round:
    """uvicorn on its own port, or (``by_fd``) on a socket opened for it as gapless does."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=socket.SOMAXCONN)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    port = int(sock.getsockname()[1])
    if by_fd:
        argv, fds = [*UVICORN, "--fd", str(sock.fileno())], (sock.fileno(),)
    else:
        argv, fds = [*UVICORN, "--host", "127.0.0.1", "--port", str(port)], ()
        sock.close()
    with on_cpu(0):
        server = subprocess.Popen(argv, env=ENV, stderr=subprocess.PIPE, text=True, pass_fds=fds)
    sock.close()
    try:
        assert server.stderr is not None
        for line in server.stderr:  # uvicorn's own "Uvicorn running on ..." line
            if "running on" in line:
                break
        return measure(port, server.pid, None, seconds, tmp)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)


def managed_round(seconds: int, tmp: Path) -> Round:
    with on_cpu(0), manager([*UVICORN, "--fd", "3"], "--ready", "accept") as running_manager:
        child = running_manager.status()["generations"][0]["pid"]
        return measure(running_manager.port, child, running_manager.process.pid, seconds, tmp)


def throughput(seconds: int, rounds: int) -> dict[str, str]:
    runs: dict[str, list[Round]] = {"direct --port": [], "direct --fd N": [], "gapless": []}
    with tempfile.TemporaryDirectory(prefix="gapless-fig-") as tmp:
        for _ in range(rounds):
            runs["direct --port"].append(direct_round(seconds, Path(tmp), by_fd=False))
            runs["direct --fd N"].append(direct_round(seconds, Path(tmp), by_fd=True))
            runs["gapless"].append(managed_round(seconds, Path(tmp)))
    rows = {}
    for name, results in runs.items():
        rows[f"uvicorn {name}: req/s (each round)"] = _each(r.rate for r in results)
    for name, results in runs.items():
        cpu = (r.server_cpu_per_request * 1e6 for r in results)
        rows[f"uvicorn {name}: CPU per request (each round)"] = _each(cpu, " us")
    for base in ("direct --port", "direct --fd N"):
        pairs = list(zip(runs["gapless"], runs[base], strict=True))
        rates = statistics.median(m.rate / d.rate for m, d in pairs)
        costs = statistics.median(
            m.server_cpu_per_request / d.server_cpu_per_request for m, d in pairs
        )
        rows[f"gapless / {base}: req/s ratio, CPU per request ratio (medians)"] = (
            f"{rates:.3f}, {costs:.3f}"
        )
    manager_cpu = (r.manager_cpu * 1000 for r in runs["gapless"])
    rows["manager CPU while uvicorn served under it (each round)"] = _each(manager_cpu, " ms")
    return rows


def _each(values: Iterable[float], unit: str = "") -> str:
    return " ".join(f"{value:.0f}{unit}" for value in values)


def print_table(rows: dict[str, str]) -> None:
    width = max(len(name) for name in rows)
    for name, value in rows.items():
        print(f"{name:<{width}}  {value}", flush=True)


def servers(reloads: int) -> None:
    print(f"{'server':<24} {'failed':>7} {'requests':>9}  detail")
    for server in SERVERS:
        if (missing := server.missing()) is not None:
            print(f"{server.name:<24} skipped: {missing}")
            continue
        options = ("--drain-timeout", "20", *server.options)
        with (
            manager(server.argv, *options) as running_manager,
            tempfile.TemporaryDirectory() as tmp,
        ):
            outcome = reload_under_load(running_manager, Path(tmp), reloads)
        print(f"{server.name:<24} {outcome.failed:>7} {outcome.requests:>9}  {outcome.describe()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", choices=["figures", "servers"], default="figures")
    parser.add_argument("--reloads", type=int, default=None, help="20 (figures), 10 (servers)")
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if WRK is None:
        sys.exit("run_figures.py: wrk is not installed (bash scripts/setup.sh as root)")
    print(
        f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {sys.version.split()[0]}"
    )
    if args.what == "servers":
        servers(args.reloads or 10)
        return
    print_table(memory_and_wakeups(args.reloads or 20, args.idle))
    print_table(reload_overhead())
    print_table(throughput(args.seconds, args.rounds))


if __name__ == "__main__":
    main()
