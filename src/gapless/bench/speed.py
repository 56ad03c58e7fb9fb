"""``gapless bench --speed``: gapless serve's throughput and p99 beside the plain server
it runs, steady and reloaded every few seconds, in one run.

For each server kind (uvicorn, granian) three rows: the plain server, ``gapless
serve`` without reloads, and ``gapless serve`` with a ``gapless reload`` every
``reload_every`` seconds. Each row is measured ``rounds`` times, the rows taking
turns within a round (plain, gapless, gapless reloading, plain...), so that a noisy
neighbour hits them all; the report gives medians. Each run is a fresh server on a
fresh port, loaded by wrk (one thread, ``connections`` keep-alive connections) and
an open-loop prober, the server pinned to the first half of the CPUs and the load
to the other half.

Example::

    result = run_speed(SpeedConfig(seconds=5, rounds=1, servers=("uvicorn",)))
    print(format_speed(result))
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from ..errors import BenchError
from ..sockets.addresses import TcpAddress
from .prober import Prober, ProberConfig
from .runner import concrete_address, pinned, split_cpus
from .speed_servers import (
    SERVER_KINDS,
    PlainServer,
    ServeServer,
    app_import_ms,
    plain_server,
    serve_refusal,
    stack_start_ms,
    tree_cpu_seconds,
)
from .wrk import WrkReport, WrkRun, wrk_path

__all__ = ["MODES", "Row", "RunRecord", "SpeedConfig", "SpeedResult", "run_speed"]

MODES = ("plain", "steady", "reloading")
APP = "gapless.bench.apps:asgi"


@dataclass(frozen=True)
class SpeedConfig:
    """How long and how hard; ``rate`` is the prober's (0: no prober)."""

    seconds: float = 20.0
    reload_every: float = 2.0
    rounds: int = 3
    servers: tuple[str, ...] = SERVER_KINDS
    app: str = APP
    connections: int = 32
    rate: float = 200.0
    pin: bool = True
    timeout: float = 60.0


@dataclass(frozen=True)
class Row:
    """One line of the table: a server kind, run plain or under gapless serve."""

    kind: str
    mode: str

    def label(self, every: float) -> str:
        serve = "gapless serve" + ("" if self.kind == "uvicorn" else f" --server {self.kind}")
        if self.mode == "plain":
            return f"plain {self.kind}"
        return f"{serve}, steady" if self.mode == "steady" else f"{serve}, reload every {every:g} s"


@dataclass
class RunRecord:
    """One run of one row; ``load`` is the 1-minute load average at its start and end."""

    row: Row
    round: int
    load: tuple[float, float] = (0.0, 0.0)
    wrk: WrkReport | None = None
    probes: int = 0
    probe_failures: int = 0
    ready_ms: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    error: str | None = None

    @property
    def failed(self) -> int:
        return (self.wrk.failed if self.wrk else 0) + self.probe_failures

    @property
    def cpu_us_per_request(self) -> float:
        """The server's CPU time per request answered (wrk's and the prober's)."""
        requests = (self.wrk.requests if self.wrk else 0) + self.probes
        return self.cpu_seconds / requests * 1e6 if requests else 0.0


@dataclass
class SpeedResult:
    """A whole ``--speed`` run: its rows, why some were skipped, every run's record,
    and per server kind the cold stack start and the app's warm import, in ms."""

    config: SpeedConfig
    rows: list[Row]
    skipped: dict[Row, str]
    server_cpus: list[int]
    load_cpus: list[int]
    load: tuple[float, float] = (0.0, 0.0)
    runs: list[RunRecord] = field(default_factory=list)
    stack_ms: dict[str, float] = field(default_factory=dict)
    import_ms: dict[str, float] = field(default_factory=dict)


def run_speed(config: SpeedConfig) -> SpeedResult:
    """Measure every row ``config.rounds`` times, rows taking turns.

    A row that cannot run here (its server not installed, or ``gapless serve``
    refusing it) is skipped with the reason; a run that fails keeps its error.

    Raises:
        BenchError: wrk is not installed, or a server kind is unknown.
    """
    if wrk_path() is None:
        raise BenchError("wrk is not installed: apt-get install wrk (--speed needs it)")
    unknown = [kind for kind in config.servers if kind not in SERVER_KINDS]
    if unknown:
        raise BenchError(f"unknown server {unknown[0]!r}: use {','.join(SERVER_KINDS)}")
    server_cpus, load_cpus = split_cpus() if config.pin else ([], [])
    rows = [Row(kind, mode) for kind in config.servers for mode in MODES]
    result = SpeedResult(config, rows, _skipped(rows), server_cpus, load_cpus)
    start = os.getloadavg()[0]
    for kind in config.servers:
        if Row(kind, "plain") not in result.skipped:
            result.stack_ms[kind] = stack_start_ms(kind)
            result.import_ms[kind] = app_import_ms(config.app, kind)
    for number in range(config.rounds):
        for row in rows:
            if row not in result.skipped:
                result.runs.append(_run_once(row, number, config, server_cpus, load_cpus))
    result.load = (start, os.getloadavg()[0])
    return result


def _skipped(rows: list[Row]) -> dict[Row, str]:
    skipped = {}
    for row in rows:
        reason = serve_refusal(row.kind)
        if reason is not None and (row.mode != "plain" or "not installed" in reason):
            skipped[row] = reason
    return skipped


def _run_once(
    row: Row, number: int, config: SpeedConfig, server_cpus: list[int], load_cpus: list[int]
) -> RunRecord:
    record = RunRecord(row, number)
    before = os.getloadavg()[0]
    address = concrete_address(TcpAddress("127.0.0.1", 0))
    server: PlainServer | ServeServer
    if row.mode == "plain":
        server = plain_server(row.kind, config.app, timeout=config.timeout)
    else:
        server = ServeServer(row.kind, config.app, timeout=config.timeout)
    try:
        with pinned(server_cpus):  # the server and all it starts run there
            if isinstance(server, PlainServer):
                server.spawn(address)
            else:
                server.start(address)
        if isinstance(server, PlainServer):
            server.wait_ready(address)  # unpinned: its requests do not compete for CPU 0
        _load(server, row, config, record, address, load_cpus)
    except BenchError as exc:
        tail = " | ".join(server.output_tail()[-4:])
        record.error = f"{exc}; its last lines: {tail}" if tail else str(exc)
    finally:
        server.stop()
    record.load = (before, os.getloadavg()[0])
    return record


def _load(
    server: PlainServer | ServeServer,
    row: Row,
    config: SpeedConfig,
    record: RunRecord,
    address: TcpAddress,
    load_cpus: list[int],
) -> None:
    """wrk and the prober for ``config.seconds``; the reloads meanwhile, if any."""
    wrk = WrkRun(  # a duration it never reaches: interrupted at the end
        address, duration=config.seconds + config.timeout, connections=config.connections,
        cpus=load_cpus,
    )  # fmt: skip
    prober = None
    if config.rate > 0:
        prober = Prober(ProberConfig(address, rate=config.rate, connections=8, cpus=load_cpus))
    assert server.main_pid is not None
    cpu_before = tree_cpu_seconds(server.main_pid)
    with pinned(load_cpus):
        wrk.start()
    t0 = time.monotonic()
    end = t0 + config.seconds
    if prober is not None:
        prober.start(t0)
        prober.finish_at(end)
    try:
        if isinstance(server, ServeServer) and row.mode == "reloading":
            _reload_until(server, t0, end, config.reload_every, record)
        threading.Event().wait(max(0.0, end - time.monotonic()))  # paces, never set
        record.wrk = wrk.interrupt(config.timeout)
        record.cpu_seconds = tree_cpu_seconds(server.main_pid) - cpu_before
    except BaseException:
        wrk.kill()
        raise
    finally:
        if prober is not None:
            prober.finish_at(min(end, time.monotonic()))
            samples = prober.join()
            record.probes = len(samples)
            record.probe_failures = sum(sample.outcome != "ok" for sample in samples)


def _reload_until(
    server: ServeServer, t0: float, end: float, every: float, record: RunRecord
) -> None:
    """A reload due every ``every`` seconds from ``t0``, the last one due a whole
    spacing before ``end`` (so it completes under load); a late one delays the next."""
    pacer = threading.Event()  # never set: its wait() paces the schedule
    number = 1
    while (due := t0 + number * every) + every <= end:
        pacer.wait(max(0.0, due - time.monotonic()))
        record.ready_ms.append(server.reload_ready_ms())
        number += 1
