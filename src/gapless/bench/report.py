"""What a bench run found: the summary table, the JSON result, the last line.

A reload's window runs from its signal to the later of "new ready" and "old exited";
a prober request belongs to the window its lifetime (due time to outcome) overlaps,
else to steady state. Throughput is ok answers per second of window or steady time.
The run's last line is ``<N> requests, <F> failed, <R> reloads``, counting the prober
and wrk together; each wrk socket error is a failed attempt (wrk counts only answered
requests as requests), so F never exceeds N. wrk reconnects at once after an error,
so its error count grows with an outage's length: compare peers by the prober's
failures, which come at a fixed rate.

Example::

    summary = summarize(result)
    print(format_summary(result, summary))
    write_json(result, summary, "bench.json")
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .prober import FAILURES, Sample
from .runner import BenchResult

__all__ = ["Stats", "Summary", "format_summary", "summarize", "to_json", "write_json"]


@dataclass(frozen=True)
class Stats:
    """Prober figures over a set of samples and the seconds they cover."""

    requests: int
    failed: int
    by_class: dict[str, int]
    seconds: float
    ok_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


@dataclass(frozen=True)
class Summary:
    requests: int
    failed: int
    reloads: int
    prober: Stats
    in_reloads: Stats
    steady: Stats
    window_failures: list[int]

    @property
    def line(self) -> str:
        return f"{self.requests} requests, {self.failed} failed, {self.reloads} reloads"


def summarize(result: BenchResult) -> Summary:
    """Count and time everything ``result`` recorded."""
    windows = [
        (r.signalled - result.t0, max(r.ready, r.old_exited) - result.t0) for r in result.reloads
    ]
    inside: list[Sample] = []
    outside: list[Sample] = []
    window_failures = [0] * len(windows)
    for sample in result.samples:
        index = _window_of(sample, windows)
        (outside if index is None else inside).append(sample)
        if index is not None and sample.outcome != "ok":
            window_failures[index] += 1
    total = result.end - result.t0
    window_time = sum(end - start for start, end in windows)
    wrk = result.wrk
    prober = stats(result.samples, total)
    return Summary(
        requests=prober.requests + (wrk.requests + wrk.socket_errors if wrk else 0),
        failed=prober.failed + (wrk.failed if wrk else 0),
        reloads=len(result.reloads),
        prober=prober,
        in_reloads=stats(inside, window_time),
        steady=stats(outside, total - window_time),
        window_failures=window_failures,
    )


def stats(samples: Sequence[Sample], seconds: float) -> Stats:
    """Figures for ``samples`` spread over ``seconds``."""
    counts = Counter(sample.outcome for sample in samples)
    latencies = sorted(sample.latency * 1000 for sample in samples if sample.outcome == "ok")
    return Stats(
        requests=len(samples),
        failed=len(samples) - counts["ok"],
        by_class={outcome: counts[outcome] for outcome in FAILURES},
        seconds=seconds,
        ok_per_s=counts["ok"] / seconds if seconds > 0 else 0.0,
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        max_ms=latencies[-1] if latencies else None,
    )


def format_summary(result: BenchResult, summary: Summary) -> str:
    """The human-readable report; its last line is :attr:`Summary.line`."""
    config = result.config
    mode = "keep-alive" if config.keep_alive else "Connection: close"
    lines = [
        f"strategy {config.strategy}: {' '.join(result.command)}",
        f"on {result.address}, {result.end - result.t0:.1f} s, {config.reloads} reloads; prober "
        f"{config.rate:g} req/s ({mode}, up to {config.connections} connections)"
        + (f"; wrk -c{config.connections}" if result.wrk else ""),
        "reload  signal at  new ready  old exited  failed  pids",
    ]
    rows = zip(result.reloads, summary.window_failures, strict=True)
    for number, (timing, failed) in enumerate(rows, 1):
        ready, exited = timing.ready - timing.signalled, timing.old_exited - timing.signalled
        lines.append(
            f"{number:6}  {timing.signalled - result.t0:7.2f} s  {_ms(ready):>9}  {_ms(exited):>10}"
            f"  {failed:6}  {_pids(timing.old_pids)} -> {_pids(timing.new_pids)}"
        )
    lines.append("prober    requests  failed    ok/s   p50 ms   p99 ms   max ms")
    for name, part in (("reloads", summary.in_reloads), ("steady", summary.steady)):
        lines.append(
            f"{name:<8} {part.requests:9} {part.failed:7} {part.ok_per_s:7.0f} "
            f"{_num(part.p50_ms):>8} {_num(part.p99_ms):>8} {_num(part.max_ms):>8}"
        )
    by_class = ", ".join(f"{k} {v}" for k, v in summary.prober.by_class.items() if v) or "none"
    lines.append(f"prober failures: {by_class}")
    if result.wrk is not None:
        wrk = result.wrk
        lines.append(
            f"wrk: {wrk.requests} requests ({wrk.rate:.0f}/s), socket errors connect {wrk.connect}"
            f" read {wrk.read} write {wrk.write} timeout {wrk.timeout}, non-2xx {wrk.non_2xx},"
            f" p99 {wrk.p99_us / 1000:.1f} ms"
        )
    if summary.reloads:
        prober_rate = summary.prober.failed / summary.reloads
        wrk_rate = f", wrk {result.wrk.failed / summary.reloads:.1f}" if result.wrk else ""
        lines.append(f"failures per reload: prober {prober_rate:.1f}{wrk_rate}")
    lines += [f"note: {note}" for note in result.notes]
    lines.append(summary.line)
    return "\n".join(lines)


def to_json(result: BenchResult, summary: Summary) -> dict[str, Any]:
    """Everything, as JSON-ready values; times in seconds from the load's start."""
    config = asdict(result.config)
    config["address"] = str(result.config.address)
    return {
        "version": 1,
        "summary": summary.line,
        "config": config,
        "address": str(result.address),
        "command": result.command,
        "duration": result.end - result.t0,
        "machine": machine(),
        "cpus": {"server": result.server_cpus, "load": result.load_cpus},
        "requests": summary.requests,
        "failed": summary.failed,
        "prober": asdict(summary.prober),
        "in_reloads": asdict(summary.in_reloads),
        "steady": asdict(summary.steady),
        "reloads": [
            {
                "signalled": r.signalled - result.t0,
                "ready": r.ready - result.t0,
                "old_exited": r.old_exited - result.t0,
                "old_pids": list(r.old_pids),
                "new_pids": list(r.new_pids),
                "failed": failed,
            }
            for r, failed in zip(result.reloads, summary.window_failures, strict=True)
        ],
        "wrk": result.wrk.to_json() if result.wrk else None,
        "notes": result.notes,
        "samples": {
            "start": [round(s.start, 6) for s in result.samples],
            "latency": [round(s.latency, 6) for s in result.samples],
            "outcome": [s.outcome for s in result.samples],
            "pid": [s.pid for s in result.samples],
        },
    }


def write_json(result: BenchResult, summary: Summary, path: str) -> None:
    """Write :func:`to_json` to ``path``."""
    with open(path, "w") as file:
        json.dump(to_json(result, summary), file)


def machine() -> dict[str, Any]:
    """What the figures ran on."""
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                "",
            )
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _window_of(sample: Sample, windows: Sequence[tuple[float, float]]) -> int | None:
    end = sample.start + sample.latency
    for index, (start, stop) in enumerate(windows):
        if sample.start <= stop and end >= start:
            return index
    return None


def _percentile(ordered: Sequence[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pids(pids: Sequence[int]) -> str:
    return ",".join(str(pid) for pid in pids[:3]) + ("..." if len(pids) > 3 else "")
