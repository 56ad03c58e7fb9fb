"""One bench run: start the server, load it, reload it N times, stop, keep the record.

Reload ``i`` is due at ``t0 + duration * i / (N + 1)``; a reload that is not complete
by the next one's due time delays it (granian's take seconds by design). The load
runs until ``duration`` or, if reloads ran late, one reload spacing after the last
reload completed, so every reload is measured under load.

Where the machine has two CPUs or more, the server (and everything it starts) runs
on the first half and the load (the prober's thread, wrk) on the second, so the load
does not take CPU from the server it measures.

Example::

    result = run_bench(BenchConfig(strategy="naive", reloads=2, duration=3, wrk=False))
    print(len(result.samples), [r.ready - r.signalled for r in result.reloads])
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..errors import BenchError
from ..sockets.addresses import TcpAddress
from .prober import Prober, ProberConfig, Sample
from .strategies import make_strategy
from .strategy import ReloadTiming, Strategy
from .wrk import WrkReport, WrkRun, wrk_path

__all__ = ["BenchConfig", "BenchResult", "concrete_address", "pinned", "run_bench", "split_cpus"]

ANY_LOCAL_PORT = TcpAddress("127.0.0.1", 0)


@dataclass(frozen=True)
class BenchConfig:
    """What to run and how hard; ``wrk=None`` uses wrk when it is installed."""

    strategy: str = "run"
    command: tuple[str, ...] = ()
    address: TcpAddress = ANY_LOCAL_PORT
    reloads: int = 5
    duration: float = 10.0
    rate: float = 200.0
    connections: int = 32
    keep_alive: bool = True
    wrk: bool | None = None
    pin: bool = True
    timeout: float = 60.0


@dataclass
class BenchResult:
    """A run's record; times are ``time.monotonic()`` values, ``t0`` the load's start."""

    config: BenchConfig
    address: TcpAddress
    command: list[str]
    t0: float = 0.0
    end: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    reloads: list[ReloadTiming] = field(default_factory=list)
    wrk: WrkReport | None = None
    server_cpus: list[int] = field(default_factory=list)
    load_cpus: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_bench(config: BenchConfig, strategy: Strategy | None = None) -> BenchResult:
    """Run the server under ``config.strategy`` (or ``strategy``, one made by the
    caller, as :mod:`gapless.testing` does), under load, through its reloads.

    Returns:
        Every prober sample, every reload's timing and wrk's report (if it ran).

    Raises:
        BenchError: the strategy or command is unusable, the server did not start, a
            reload did not complete in time, or wrk failed.
    """
    if strategy is None:
        strategy = make_strategy(config.strategy, config.command, timeout=config.timeout)
    address = concrete_address(config.address)
    server_cpus, load_cpus = split_cpus() if config.pin else ([], [])
    result = BenchResult(config, address, strategy.command, server_cpus=server_cpus)
    result.load_cpus = load_cpus
    use_wrk = config.wrk if config.wrk is not None else wrk_path() is not None
    if config.wrk is None and not use_wrk:
        result.notes.append("wrk is not installed (apt-get install wrk): prober only")
    try:
        with pinned(server_cpus):  # the server and all it starts run there
            try:
                strategy.start(address)
                _load_and_reload(strategy, config, result, use_wrk)
            finally:
                strategy.stop()
    except BenchError as exc:
        tail = " | ".join(strategy.output_tail()[-8:])
        raise BenchError(f"{exc}; the server's last lines: {tail}" if tail else str(exc)) from None
    return result


def _load_and_reload(
    strategy: Strategy, config: BenchConfig, result: BenchResult, wrk: bool
) -> None:
    prober = Prober(
        ProberConfig(
            result.address,
            rate=config.rate,
            keep_alive=config.keep_alive,
            connections=config.connections,
            timeout=min(config.timeout, 5.0),
            cpus=result.load_cpus,
        )
    )
    runner = _start_wrk(config, result) if wrk else None
    result.t0 = time.monotonic()
    prober.start(result.t0)
    try:
        _reload_on_schedule(strategy, config, result, prober)
        if runner is not None:
            result.wrk = runner.interrupt(timeout=config.timeout)
    except BaseException:
        prober.finish_at(time.monotonic())
        if runner is not None:
            runner.kill()
        raise
    finally:
        result.samples = prober.join()


def _reload_on_schedule(
    strategy: Strategy, config: BenchConfig, result: BenchResult, prober: Prober
) -> None:
    pacer = threading.Event()  # never set: its wait() paces the schedule
    spacing = config.duration / (config.reloads + 1)
    for number in range(1, config.reloads + 1):
        pacer.wait(max(0.0, result.t0 + number * spacing - time.monotonic()))
        result.reloads.append(strategy.reload())
    last = result.reloads[-1].old_exited if result.reloads else result.t0
    result.end = max(result.t0 + config.duration, last + spacing)
    prober.finish_at(result.end)
    pacer.wait(max(0.0, result.end - time.monotonic()))


def _start_wrk(config: BenchConfig, result: BenchResult) -> WrkRun:
    # wrk gets a duration it never reaches: it is stopped (SIGINT) when the load ends.
    bound = config.duration + config.reloads * config.timeout + 10
    runner = WrkRun(
        result.address,
        duration=bound,
        connections=config.connections,
        keep_alive=config.keep_alive,
        cpus=result.load_cpus,
    )
    with pinned(result.load_cpus):
        runner.start()
    return runner


def split_cpus() -> tuple[list[int], list[int]]:
    """Server CPUs and load CPUs: the halves of this process's allowed CPUs, or two
    empty lists (no pinning) with fewer than two."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return [], []
    half = len(cpus) // 2
    return cpus[:half], cpus[half:]


@contextlib.contextmanager
def pinned(cpus: Sequence[int]) -> Iterator[None]:
    """Run the calling thread (and what it forks) on ``cpus``; restore on exit."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def concrete_address(address: TcpAddress) -> TcpAddress:
    """``address`` with a free port in place of port 0.

    Raises:
        BenchError: the address cannot be bound.
    """
    if address.port:
        return address
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address.host, 0))
            port = int(probe.getsockname()[1])
    except OSError as exc:
        raise BenchError(f"cannot bind {address}: {exc.strerror}; pass another --bind") from None
    return TcpAddress(address.host, port, address.family)
