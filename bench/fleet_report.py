"""A fleet run's figures: one row per run, as a table and as JSON.

A prober request belongs to a deploy window if its lifetime (due time to outcome)
overlaps one (a deploy's first step's start to its last step's end), else to steady
time. wrk counts only answered requests as requests; each of its socket errors is a
failed attempt, so its failures are counted apart from the prober's.

Example::

    row = summarize(result)
    print(format_table([row]))
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from fleet_deploy import FleetResult

from gapless.bench.prober import Sample
from gapless.bench.report import machine, stats

__all__ = ["failure_lines", "format_markdown", "format_table", "summarize", "write_json"]


def _in_window(sample: Sample, windows: Sequence[tuple[float, float]]) -> bool:
    end = sample.start + sample.latency
    return any(start <= end and sample.start <= stop for start, stop in windows)


def summarize(result: FleetResult) -> dict[str, Any]:
    """The run's figures, JSON-ready."""
    config = result.config
    inside = [s for s in result.samples if _in_window(s, result.windows)]
    outside = [s for s in result.samples if not _in_window(s, result.windows)]
    window_time = sum(stop - start for start, stop in result.windows)
    total = result.end - result.t0
    durations = [stop - start for start, stop in result.windows]
    wrk = result.wrk
    prober = stats(result.samples, total)
    return {
        "label": label(result),
        "config": asdict(config),
        "frontend": str(result.frontend),
        "load_average_at_start": list(result.load_average),
        "seconds": round(total, 2),
        "prober": asdict(prober),
        "in_deploys": asdict(stats(inside, window_time)),
        "steady": asdict(stats(outside, total - window_time)),
        "wrk": wrk.to_json() if wrk else None,
        "failed": prober.failed + (wrk.failed if wrk else 0),
        "deploy_seconds": {
            "mean": round(statistics.fmean(durations), 3) if durations else None,
            "max": round(max(durations), 3) if durations else None,
        },
        "haproxy": result.haproxy,
        "steps": [
            asdict(step) | {"seconds": round(step.end - step.start, 3)} for step in result.steps
        ],
        "notes": result.notes,
        "haproxy_config": result.haproxy_config,
    }


def label(result: FleetResult) -> str:
    config = result.config
    drain = (
        " runtime-api" if config.drain_mode == "runtime-api" and config.deploy != "reload" else ""
    )
    retry = " +redispatch" if config.redispatch else ""
    return f"{config.server} {config.deploy}{drain}{retry}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _classes(row: dict[str, Any]) -> str:
    parts = [f"{name} {count}" for name, count in row["prober"]["by_class"].items() if count]
    wrk = row["wrk"]
    if wrk:
        for name in ("connect", "read", "write", "timeout", "non_2xx"):
            if wrk[name]:
                parts.append(f"wrk {name} {wrk[name]}")
    return ", ".join(parts) or "none"


def _requests(row: dict[str, Any]) -> int:
    """The prober's requests and wrk's, its socket errors included."""
    wrk = row["wrk"]
    return int(row["prober"]["requests"]) + (
        int(wrk["requests"] + wrk["socket_errors"]) if wrk else 0
    )


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per run; the failure classes and HAProxy's counters below."""
    lines = [
        "run                           deploys  requests  failed  p99 deploy  p99 steady"
        "  deploy s (max)  load avg",
    ]
    for row in rows:
        requests = _requests(row)
        seconds = row["deploy_seconds"]
        lines.append(
            f"{row['label']:<29} {row['config']['deploys']:7} {requests:9} {row['failed']:7}"
            f" {_ms(row['in_deploys']['p99_ms']):>8} ms {_ms(row['steady']['p99_ms']):>8} ms"
            f"  {seconds['mean'] or 0:6.2f} ({seconds['max'] or 0:.2f})"
            f"  {row['load_average_at_start'][0]:.2f}"
        )
    for row in rows:
        counters = ", ".join(f"{k} {v}" for k, v in row["haproxy"].items())
        lines.append(f"{row['label']}: failed by class: {_classes(row)}; haproxy: {counters}")
        lines += [f"  note: {note}" for note in row["notes"]]
    return "\n".join(lines)


def write_json(rows: Sequence[dict[str, Any]], path: str, argv: Sequence[str]) -> None:
    with open(path, "w") as file:
        json.dump(
            {"version": 1, "argv": list(argv), "machine": machine(), "runs": list(rows)},
            file,
            indent=1,
        )


def format_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table docs/fleet.md shows, one row per run."""
    lines = [
        "| run | deploys | run s | requests | failed | p99 in deploys | p99 steady "
        "| deploy s, mean (max) | load avg at start |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        requests = _requests(row)
        seconds = row["deploy_seconds"]
        lines.append(
            f"| {row['label']} | {row['config']['deploys']} | {row['seconds']:.0f} | {requests:,}"
            f" | {row['failed']}"
            f" | {_ms(row['in_deploys']['p99_ms'])} ms | {_ms(row['steady']['p99_ms'])} ms"
            f" | {seconds['mean'] or 0:.2f} ({seconds['max'] or 0:.2f})"
            f" | {row['load_average_at_start'][0]:.2f} |"
        )
    return "\n".join(lines)


def failure_lines(rows: Sequence[dict[str, Any]]) -> str:
    """Per run: the failures by class and HAProxy's counters, as a list."""
    lines = []
    for row in rows:
        counters = ", ".join(f"{k} {v}" for k, v in row["haproxy"].items())
        lines.append(f"* {row['label']}: failed: {_classes(row)}; HAProxy: {counters}")
    return "\n".join(lines)
