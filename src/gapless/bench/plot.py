"""The PNG timeline of a bench run, drawn with matplotlib when it is installed.

Three panels share the time axis: ok answers per 100 ms, failures per 100 ms by
class, and the latency of every ok answer (log scale). Each reload is shaded from
its signal to its old generation's exit, with a line where the new one was ready.

Example::

    note = write_png(result, summary, "bench.png")  # None, or why there is no PNG
"""

from __future__ import annotations

import importlib
from collections import Counter
from typing import Any

from .prober import FAILURES
from .report import Summary
from .runner import BenchResult

__all__ = ["write_png"]

BUCKET = 0.1  # seconds
_COLOURS = ("tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:gray")


def write_png(result: BenchResult, summary: Summary, path: str) -> str | None:
    """Draw the timeline into ``path``.

    Returns:
        None when written, else a one-line note saying why not (matplotlib missing).
    """
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return "no PNG timeline: matplotlib is missing (pip install 'gapless[plot]')"
    matplotlib.use("Agg")  # no display needed
    pyplot: Any = importlib.import_module("matplotlib.pyplot")
    figure, (ok_axes, fail_axes, latency_axes) = pyplot.subplots(
        3, 1, sharex=True, figsize=(11, 7), height_ratios=(2, 1, 2)
    )
    buckets = int((result.end - result.t0) / BUCKET) + 1
    times = [index * BUCKET for index in range(buckets)]
    ok = Counter(int(s.start / BUCKET) for s in result.samples if s.outcome == "ok")
    ok_axes.step(times, [ok[i] for i in range(buckets)], where="post", color="tab:green")
    ok_axes.set_ylabel("ok / 100 ms")
    _failures(fail_axes, result, times)
    points = [(s.start, s.latency * 1000) for s in result.samples if s.outcome == "ok"]
    latency_axes.scatter([p[0] for p in points], [p[1] for p in points], s=2, color="tab:blue")
    latency_axes.set_yscale("log")
    latency_axes.set_ylabel("latency, ms")
    latency_axes.set_xlabel("seconds")
    for axes in (ok_axes, fail_axes, latency_axes):
        for timing in result.reloads:
            start, end = timing.signalled - result.t0, timing.old_exited - result.t0
            axes.axvspan(start, max(end, timing.ready - result.t0), color="0.85", zorder=0)
            axes.axvline(timing.ready - result.t0, color="tab:green", linewidth=0.8)
    figure.suptitle(f"{result.config.strategy}: {summary.line}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return None


def _failures(axes: Any, result: BenchResult, times: list[float]) -> None:
    """Failures per bucket, stacked by class."""
    bottom = [0] * len(times)
    for outcome, colour in zip(FAILURES, _COLOURS, strict=True):
        counts = Counter(int(s.start / BUCKET) for s in result.samples if s.outcome == outcome)
        if counts:
            heights = [counts[i] for i in range(len(times))]
            axes.bar(
                times, heights, BUCKET, bottom=bottom, align="edge", color=colour, label=outcome
            )
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axes.set_ylabel("failed / 100 ms")
    if any(bottom):
        axes.legend(loc="upper right", fontsize="small")
