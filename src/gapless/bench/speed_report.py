"""The table of ``gapless bench --speed``: per row the medians over rounds, the ratios
to the plain server of the same kind, and issue 12's goals read off them.

Example::

    print(format_speed(result))       # a Markdown table and the goals
    write_speed_json(result, "speed.json")
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from .speed import Row, RunRecord, SpeedResult

__all__ = ["RowSummary", "format_speed", "summarize_speed", "write_speed_json"]

_HEADER = (
    "| row | req/s | ÷ plain | p99, ms | p99 ÷ plain | CPU µs/req | ÷ plain "
    "| failed (wrk + prober) | reloads | reload → ready, ms | load avg |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass(frozen=True)
class RowSummary:
    """One row over its rounds: medians of rate and p99, sums of failures and reloads,
    the median of every reload's ready time; ratios to the plain row of its kind."""

    row: Row
    label: str
    runs: int
    rate: float
    p99_ms: float
    cpu_us: float
    wrk_failed: int
    probe_failed: int
    probes: int
    reloads: int
    ready_ms: float | None
    load: tuple[float, float]
    rate_ratio: float | None = None
    p99_ratio: float | None = None
    cpu_ratio: float | None = None
    errors: tuple[str, ...] = ()
    skipped: str | None = None

    @property
    def failed(self) -> int:
        return self.wrk_failed + self.probe_failed


def summarize_speed(result: SpeedResult) -> list[RowSummary]:
    """One summary per row, in the table's order."""
    summaries = {row: _summary(result, row) for row in result.rows}
    for row, summary in summaries.items():
        plain = summaries[Row(row.kind, "plain")]
        if summary.runs and plain.runs and plain.rate and plain.p99_ms:
            summaries[row] = _with_ratios(summary, plain)
    return list(summaries.values())


def _summary(result: SpeedResult, row: Row) -> RowSummary:
    label = row.label(result.config.reload_every)
    runs = [run for run in result.runs if run.row == row]
    measured = [run for run in runs if run.wrk is not None and run.error is None]
    readies = [ms for run in runs for ms in run.ready_ms]
    return RowSummary(
        row=row,
        label=label,
        runs=len(measured),
        rate=_median(measured, lambda run: run.wrk.rate if run.wrk else 0.0),
        p99_ms=_median(measured, lambda run: run.wrk.p99_us / 1000 if run.wrk else 0.0),
        cpu_us=_median(measured, lambda run: run.cpu_us_per_request),
        wrk_failed=sum(run.wrk.failed for run in runs if run.wrk),
        probe_failed=sum(run.probe_failures for run in runs),
        probes=sum(run.probes for run in runs),
        reloads=len(readies),
        ready_ms=statistics.median(readies) if readies else None,
        load=(runs[0].load[0], runs[-1].load[1]) if runs else (0.0, 0.0),
        errors=tuple(run.error for run in runs if run.error),
        skipped=result.skipped.get(row),
    )


def _with_ratios(summary: RowSummary, plain: RowSummary) -> RowSummary:
    from dataclasses import replace

    return replace(
        summary,
        rate_ratio=summary.rate / plain.rate,
        p99_ratio=summary.p99_ms / plain.p99_ms,
        cpu_ratio=summary.cpu_us / plain.cpu_us if plain.cpu_us else None,
    )


def _median(runs: list[RunRecord], value: Callable[[RunRecord], float]) -> float:
    return statistics.median(value(run) for run in runs) if runs else 0.0


def format_speed(result: SpeedResult) -> str:
    """The header, the Markdown table, the import times and the goals, as printed."""
    config = result.config
    pins = (
        f"server on CPU {result.server_cpus}, load on CPU {result.load_cpus}"
        if result.server_cpus
        else "no CPU pinning"
    )
    prober = f"prober {config.rate:g} req/s" if config.rate else "no prober"
    lines = [
        f"gapless bench --speed: {config.rounds} round(s) x {config.seconds:g} s per row, "
        f"wrk -t1 -c{config.connections} keep-alive, {prober}, {pins}; app {config.app}, "
        "no access log, log level warning",
        f"load average {result.load[0]:.2f} at start, {result.load[1]:.2f} at end",
        "",
        _HEADER,
    ]
    summaries = summarize_speed(result)
    lines += [_table_line(summary) for summary in summaries]
    lines.append("")
    for kind in result.import_ms:
        lines.append(
            f"{kind}: python + gapless.serving + {kind} cold start {result.stack_ms[kind]:.0f} ms;"
            f" the app's own import in a warm process {result.import_ms[kind]:.1f} ms"
        )
    lines += _goals(result, summaries)
    for summary in summaries:
        lines += [f"{summary.label}: error: {error}" for error in summary.errors]
    return "\n".join(lines)


def _table_line(s: RowSummary) -> str:
    if s.skipped is not None:
        return f"| {s.label} | skipped: {s.skipped} |||||||||"
    if not s.runs:
        return f"| {s.label} | no run completed (errors below) |||||||||"
    ready = "-" if s.ready_ms is None else f"{s.ready_ms:.0f}"
    return (
        f"| {s.label} | {s.rate:,.0f} | {_ratio(s.rate_ratio)} | {s.p99_ms:.1f} "
        f"| {_ratio(s.p99_ratio)} | {s.cpu_us:.0f} | {_ratio(s.cpu_ratio)} "
        f"| {s.failed} ({s.wrk_failed} + {s.probe_failed}) "
        f"| {s.reloads} | {ready} | {s.load[0]:.2f} → {s.load[1]:.2f} |"
    )


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


#: Issue 12's goals: what, the row (kind, mode), its figure, the sign and target
#: (None: 20 ms + the app's own import), the figure's format.
GOALS: tuple[tuple[str, str, str, str, str, float | None, str], ...] = (
    ("gapless serve steady ÷ plain uvicorn", "uvicorn", "steady", "rate_ratio", "≥", 0.97, ".2f"),
    ("reloading ÷ plain uvicorn", "uvicorn", "reloading", "rate_ratio", "≥", 0.85, ".2f"),
    ("p99 reloading ÷ plain uvicorn p99", "uvicorn", "reloading", "p99_ratio", "≤", 2, ".2f"),
    ("failed requests, reloading", "uvicorn", "reloading", "failed", "≤", 0, ".0f"),
    ("reload → ready, ms (20 + app import)", "uvicorn", "reloading", "ready_ms", "≤", None, ".0f"),
    ("serve --server granian ÷ plain granian", "granian", "steady", "rate_ratio", "≥", 0.95, ".2f"),
    ("failed requests, granian reloading", "granian", "reloading", "failed", "≤", 0, ".0f"),
)


def _goals(result: SpeedResult, summaries: list[RowSummary]) -> list[str]:
    """Each goal with the figure this run measured; one whose row did not run is left out."""
    by_row = {(s.row.kind, s.row.mode): s for s in summaries if s.runs and s.skipped is None}
    lines = []
    for what, kind, mode, name, sign, target, shape in GOALS:
        value = getattr(by_row.get((kind, mode)), name, None)
        if value is None:
            continue
        goal = 20 + result.import_ms.get(kind, 0.0) if target is None else target
        met = value >= goal if sign == "≥" else value <= goal
        verdict = "met" if met else "NOT met"
        lines.append(f"  {what}: {value:{shape}} (goal {sign} {goal:{shape}}) {verdict}")
    return ["", "issue 12's goals:", *lines] if lines else []


def write_speed_json(result: SpeedResult, path: str) -> None:
    """Every run and every row's summary, for a later look."""
    runs = [
        {
            "row": run.row.label(result.config.reload_every),
            "round": run.round,
            "load": run.load,
            "wrk": run.wrk.to_json() if run.wrk else None,
            "probes": run.probes,
            "probe_failures": run.probe_failures,
            "ready_ms": run.ready_ms,
            "error": run.error,
        }
        for run in result.runs
    ]
    rows = [
        {key: value for key, value in vars(s).items() if key != "row"}
        for s in summarize_speed(result)
    ]
    document = {
        "config": vars(result.config),
        "server_cpus": result.server_cpus,
        "load_cpus": result.load_cpus,
        "load": result.load,
        "stack_ms": result.stack_ms,
        "import_ms": result.import_ms,
        "rows": rows,
        "runs": runs,
    }
    with open(path, "w") as file:
        json.dump(document, file, indent=2)
        file.write("\n")
