#!/usr/bin/env python3
"""The peer table: gapless and the usual restart strategies, side by side, in one run.

Every row is one ``gapless bench`` configuration under the same load (the open-loop
prober and wrk at once) and the same reload schedule. Rows are interleaved (each
repeat visits them all, starting one row further on) so that a slow minute of the
machine does not land on one strategy; each is repeated ``--repeats`` times and the
table shows medians. Server and load run on different CPUs where there are two.

    .venv/bin/python bench/peers.py                       # the table in docs/benchmarks.md
    .venv/bin/python bench/peers.py --only naive,run --repeats 1 --duration 6

It prints the table and, with ``--write``, rewrites docs/benchmarks.md's table;
``--from-json`` tabulates the runs a previous invocation saved, without running any.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from gapless.bench.plot import write_png
from gapless.bench.report import machine, summarize, to_json
from gapless.bench.runner import BenchConfig, run_bench, split_cpus
from gapless.bench.servers import tool
from gapless.errors import GaplessError

UVICORN_FD = (tool("uvicorn"), "--fd", "3", "--no-access-log", "gapless.bench.apps:asgi")
REFERENCES = ("gapless serve", "gapless run")  # the ratios' base: the first that ran


@dataclass(frozen=True)
class Row:
    label: str
    strategy: str
    command: tuple[str, ...] = ()


ROWS = [
    Row("gapless run", "run"),
    Row("gapless run --ready notify", "run-notify"),
    Row("gapless library mode, USR2", "library"),
    Row("gapless serve", "serve"),
    Row("gapless run, uvicorn --fd 3", "run", UVICORN_FD),
    Row("naive stop-then-start", "naive"),
    Row("SO_REUSEPORT overlap", "reuseport"),
    Row("SO_REUSEPORT overlap, uvicorn --fd 3", "reuseport", UVICORN_FD),
    Row("gunicorn USR2+WINCH+QUIT", "gunicorn-usr2"),
    Row("gunicorn USR2+TERM", "gunicorn-usr2-term"),
    Row("gunicorn HUP", "gunicorn-hup"),
    Row("uvicorn --workers 2, HUP", "uvicorn-hup"),
    Row("granian --workers 2, HUP", "granian-hup"),
]


def main() -> int:
    args = _parser().parse_args()
    rows = [row for row in ROWS if not args.only or row.strategy in args.only.split(",")]
    if args.from_json:
        with open(args.from_json) as file:
            saved = json.load(file)
        runs, errors, load = saved["runs"], saved["errors"], saved.get("load", [])
        for key in ("repeats", "duration", "reloads", "rate", "connections", "close"):
            setattr(args, key, saved["args"][key])
        date = saved.get("date", "an unrecorded date")
    else:
        load, date = [os.getloadavg()[0]], time.strftime("%Y-%m-%d")
        runs, errors = _run_all(rows, args)
        load.append(os.getloadavg()[0])
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as file:
            saved = {"machine": machine(), "args": vars(args), "load": load, "date": date}
            json.dump({**saved, "runs": runs, "errors": errors}, file)
    table = _table(rows, runs, errors)
    print(table)
    if args.write:
        _write_doc(args, table, load, date)
    return 0


def _run_all(
    rows: list[Row], args: argparse.Namespace
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    runs: dict[str, list[dict[str, Any]]] = {row.label: [] for row in rows}
    errors: dict[str, str] = {}
    for repeat in range(args.repeats):
        for row in rows[repeat % len(rows) :] + rows[: repeat % len(rows)]:
            if row.label in errors:
                continue
            print(f"[{repeat + 1}/{args.repeats}] {row.label} ...", file=sys.stderr, flush=True)
            try:
                runs[row.label].append(_run(row, args, plot=repeat == 0))
            except GaplessError as exc:
                errors[row.label] = str(exc)
                print(f"  skipped: {exc}", file=sys.stderr)
    return runs, errors


def _run(row: Row, args: argparse.Namespace, plot: bool) -> dict[str, Any]:
    config = BenchConfig(
        strategy=row.strategy,
        command=row.command,
        reloads=args.reloads,
        duration=args.duration,
        rate=args.rate,
        connections=args.connections,
        keep_alive=not args.close,
    )
    result = run_bench(config)
    summary = summarize(result)
    if plot and args.plots:
        os.makedirs(args.plots, exist_ok=True)
        name = re.sub(r"[^a-z0-9]+", "-", row.label.lower()).strip("-")
        write_png(result, summary, os.path.join(args.plots, f"{name}.png"))
    data = to_json(result, summary)
    del data["samples"]  # the table needs the figures, not every request
    reloads = max(1, summary.reloads)
    wrk = result.wrk
    data["row"] = {
        "prober_failed_per_reload": summary.prober.failed / reloads,
        "wrk_failed_per_reload": wrk.failed / reloads if wrk else None,
        "p99_reload_ms": summary.in_reloads.p99_ms,
        "p99_steady_ms": summary.steady.p99_ms,
        "wrk_rate": wrk.rate if wrk else None,
        "ready_ms": statistics.median([r.ready - r.signalled for r in result.reloads]) * 1000,
        "done_ms": statistics.median(
            [max(r.ready, r.old_exited) - r.signalled for r in result.reloads]
        )
        * 1000,
    }
    print(f"  {summary.line}", file=sys.stderr, flush=True)
    return data


def _table(rows: list[Row], runs: dict[str, list[dict[str, Any]]], errors: dict[str, str]) -> str:
    totals = {label: len(items) for label, items in runs.items()}
    runs = {label: _kept(items) for label, items in runs.items()}
    medians = {label: _medians(items) for label, items in runs.items() if items}
    base = next((label for label in REFERENCES if label in medians), "")
    reference = medians.get(base, {})
    head = (
        "| strategy | runs kept | failed/reload, prober | failed/reload, wrk "
        "| p99 in reloads, ms | p99 vs REF | p99 steady, ms | wrk req/s | req/s vs REF "
        "| ready, ms | done, ms |"
    ).replace("REF", base or "gapless")
    lines = [head, "|" + "---|" * 11]
    for row in rows:
        if row.label in errors:
            lines.append(f"| {row.label} | not run: {errors[row.label]} |" + " |" * 9)
            continue
        if row.label not in medians:
            continue
        m = medians[row.label]
        items = runs[row.label]
        cells = [
            f"{sum(not item.get('overloaded') for item in items)}/{totals[row.label]}",
            _spread([item["row"]["prober_failed_per_reload"] for item in items]),
            _spread([item["row"]["wrk_failed_per_reload"] for item in items]),
            _f(m["p99_reload_ms"], 0),
            _ratio(m, reference, "p99_reload_ms"),
            _f(m["p99_steady_ms"], 0),
            _f(m["wrk_rate"], 0),
            _ratio(m, reference, "wrk_rate"),
            _f(m["ready_ms"], 0),
            _f(m["done_ms"], 0),
        ]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _kept(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs whose steady state lost nothing: where it did, the server was
    overloaded (the machine was busy), and the run says nothing about reloads. If
    every run was, all are kept, marked."""
    calm = [item for item in items if item["steady"]["failed"] == 0]
    return calm or [{**item, "overloaded": True} for item in items]


def _medians(items: list[dict[str, Any]]) -> dict[str, float | None]:
    rows = [item["row"] for item in items]
    out: dict[str, float | None] = {}
    for key in rows[0]:
        values = [row[key] for row in rows if row[key] is not None]
        out[key] = statistics.median(values) if values else None
    return out


def _spread(values: list[float | None]) -> str:
    """The median, and the range when the runs differ: ``4.6 (1.6-10.0)``."""
    known = [value for value in values if value is not None]
    if not known:
        return "-"
    low, high = min(known), max(known)
    middle = statistics.median(known)
    return _f(middle) if low == high else f"{_f(middle)} ({_f(low)}-{_f(high)})"


def _ratio(row: dict[str, float | None], reference: dict[str, float | None], key: str) -> str:
    value, base = row.get(key), reference.get(key)
    return "-" if value is None or not base else f"{value / base:.2f}"


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _write_doc(args: argparse.Namespace, table: str, load: list[float], date: str) -> None:
    path = args.write
    with open(path) as file:
        text = file.read()
    start, end = "<!-- peers:start -->", "<!-- peers:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {start} ... {end} block to rewrite")
    about = machine()
    server_cpus, load_cpus = split_cpus()
    block = (
        f"{start}\nMeasured {date} on {about['cpu'] or 'an unnamed CPU'}, "
        f"{about['cpus']} CPUs (server on {server_cpus or 'all'}, load on {load_cpus or 'all'}), "
        f"Linux {about['kernel']}, Python {about['python']}; {args.repeats} interleaved runs per "
        f"row, medians; each run {args.duration:g} s, {args.reloads} reloads, prober "
        f"{args.rate:g} req/s, wrk -c{args.connections}, "
        f"{'Connection: close' if args.close else 'keep-alive'}; load average "
        f"{' then '.join(f'{value:.1f}' for value in load) or 'not recorded'}.\n\n{table}\n{end}"
    )
    before, _, rest = text.partition(start)
    _, _, after = rest.partition(end)
    with open(path, "w") as file:
        file.write(before + block + after)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--close", action="store_true", help="Connection: close, not keep-alive")
    parser.add_argument("--only", help="comma-separated strategy names")
    parser.add_argument("--json", default="gapless-bench/peers.json", help="every run's figures")
    parser.add_argument("--plots", default="docs/benchmarks", help="a PNG per row; '' for none")
    parser.add_argument("--write", metavar="MARKDOWN", help="rewrite the table in this file")
    parser.add_argument("--from-json", metavar="JSON", help="tabulate saved runs, run nothing")
    return parser


if __name__ == "__main__":
    sys.exit(main())
