"""The loop of bench/chaos.py: each fault injected in its own window under wrk,
then the manager settled (or, if it died or hung, recorded and replaced) and
sampled. The kinds of fault are in bench/chaos_faults.py, bench/chaos_hostile.py
and bench/chaos_supervised.py; the figures in bench/chaos_report.py.
"""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos_basics import (
    TIMEOUT,
    FaultProblem,
    FaultRecord,
    kill_groups,
    our_processes,
)
from chaos_target import Target

from gapless.bench.processes import still_running
from gapless.bench.wrk import lua_script, parse_report, wrk_path
from gapless.errors import BenchError


@dataclass
class Chaos:
    """What the faults share: the target, the seeded random source, the options."""

    target: Target
    rng: random.Random
    stop_for: float = 0.3
    storm: int = 20
    idle: int = 1000
    flood: int = 3000
    kills: deque[float] = field(default_factory=deque)  # active generations killed, when
    service: Any = None  # chaos_supervised.Service, made at its first use
    turns: Counter[str] = field(default_factory=Counter)  # injections so far, by kind


@dataclass(frozen=True)
class Kind:
    """A kind of fault: how to inject it and what it means for the requests."""

    name: str
    inject: Callable[[Chaos, FaultRecord], None]
    what: str
    stops_manager: bool = False  # intended: nothing serves until a new manager is ready


_NOTHING = (
    'WRK_JSON {"requests": 0, "duration_us": 0, "bytes": 0, "connect": 0, "read": 0, '
    '"write": 0, "timeout": 0, "non_2xx": 0}'
)


class WrkWindow:
    """wrk over one fault window, stopped with SIGINT (it reports as at its end)."""

    def __init__(self, port: int, connections: int, delay_ms: float, workdir: Path) -> None:
        path = wrk_path()
        if path is None:
            raise BenchError("wrk is not installed: apt-get install wrk, or pass --no-wrk")
        script = workdir / "wrk.lua"
        script.write_text(
            lua_script(keep_alive=True) + f"delay = function() return {delay_ms} end\n"
        )
        self.connections = connections
        self.argv = [path, "-t1", f"-c{connections}", "-d3600s", "--timeout", "5s"]
        self.argv += ["-s", str(script), f"http://127.0.0.1:{port}/"]

    @contextlib.contextmanager
    def running(self, record: FaultRecord) -> Iterator[None]:
        process = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            yield
        finally:
            process.send_signal(signal.SIGINT)
            try:
                output, _ = process.communicate(timeout=TIMEOUT)
                if process.returncode == -signal.SIGINT and not output:
                    output = _NOTHING  # SIGINT came before wrk's handler: no request yet
                report = parse_report(output).to_json()
            except (subprocess.TimeoutExpired, BenchError) as exc:
                process.kill()
                process.communicate()
                record.problems.append(f"wrk: {exc}")
            else:
                keys = ("requests", "socket_errors", "non_2xx")
                record.wrk = {key: report[key] for key in keys}


@dataclass
class Campaign:
    chaos: Chaos
    kinds: list[Kind]
    wrk: WrkWindow | None
    interval: float

    def run(self, faults: int, duration: float, progress: bool) -> list[FaultRecord]:
        records: list[FaultRecord] = []
        deck: list[Kind] = []
        ends = time.monotonic() + duration
        while len(records) < faults and time.monotonic() < ends:
            if not deck:
                deck = list(self.kinds)
                self.chaos.rng.shuffle(deck)
            if records and self.interval:
                time.sleep(self.interval)  # --interval: pacing between faults, asked for
            record = self.inject(deck.pop(), len(records))
            records.append(record)
            if progress and (record.problems or record.manager_died or len(records) % 50 == 0):
                _print_progress(record, len(records))
        return records

    def inject(self, kind: Kind, index: int) -> FaultRecord:
        target = self.chaos.target
        record = FaultRecord(index, kind.name, time.monotonic(), manager_before=target.pid)
        record.fds_before, record.rss_before, _ = target.sample()
        window = (
            self.wrk.running(record)
            if self.wrk and not kind.stops_manager
            else contextlib.nullcontext()
        )
        with window:
            try:
                kind.inject(self.chaos, record)
            except (FaultProblem, OSError, ValueError) as exc:
                record.problems.append(f"{type(exc).__name__}: {exc}")
            self.recover(record)
        record.manager_after = target.pid
        record.fds_after, record.rss_after, record.zombies_after = target.sample()
        record.end = time.monotonic()
        return record

    def recover(self, record: FaultRecord) -> None:
        """Settle the manager; one that died or hung is recorded and replaced."""
        target = self.chaos.target
        for attempt in range(2):
            if not target.alive():
                self.replace(record, f"exited with code {target.wait_exit()}")
            try:
                target.settle()
                return
            except FaultProblem as exc:
                record.problems.append(str(exc))
                code = target.wait_exit(5.0)  # on its way out, or hung?
                if code is not None:
                    self.replace(record, f"exited with code {code}")
                elif attempt == 0:
                    target.kill()
                    self.replace(record, "hung: killed")
        raise SystemExit(
            f"fault {record.index} ({record.kind}): the manager cannot be brought back"
        )

    def replace(self, record: FaultRecord, how: str) -> None:
        target = self.chaos.target
        record.manager_died = f"{how}:\n{target.tail()}"
        record.inject_at = record.inject_at or time.monotonic()
        alive = our_processes(target.leaders)
        # Its generations drain (PR_SET_PDEATHSIG) or were killed: what still runs
        # after the drain timeout was left behind.
        still_running(alive, target.config.drain_timeout + TIMEOUT)
        left = target.left_behind()
        record.left_behind += [f"pid {pid}: {line}" for pid, line in left.items()]
        kill_groups(list(left))
        record.back_up(target.start())
        record.image_changed = True
        self.chaos.kills.clear()


def _print_progress(record: FaultRecord, done: int) -> None:
    what = f"fault {done} ({record.kind})"
    if record.manager_died:
        print(f"{what}: the manager {record.manager_died}", file=sys.stderr, flush=True)
    for problem in record.problems:
        print(f"{what}: {problem}", file=sys.stderr, flush=True)
    if done % 50 == 0:
        print(f"{done} faults done", file=sys.stderr, flush=True)
