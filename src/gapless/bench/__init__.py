"""``gapless bench``: a server reloaded again and again under load, every request counted.

Two loads run at once: an open-loop prober (:mod:`.prober`) that records each
request's due time, latency and outcome, and, when it is installed, wrk at
saturation (:mod:`.wrk`). A strategy (:mod:`.strategies`, :mod:`.servers`) starts
the server, reloads it N times, each reload waiting on events until it is complete,
and stops it; :mod:`.report` and :mod:`.plot` turn the record into a table, a JSON
file and a PNG timeline. ``bench/peers.py`` runs the peer table.

Example::

    from gapless.bench import BenchConfig, run_bench, summarize
    result = run_bench(BenchConfig(strategy="library", reloads=3, duration=5))
    print(summarize(result).line)   # e.g. "1843 requests, 0 failed, 3 reloads"
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report import Summary, summarize
    from .runner import BenchConfig, BenchResult, run_bench
    from .strategies import STRATEGIES, make_strategy
    from .strategy import ReloadTiming, Strategy

# Loaded on first use: every generation serving gapless.bench.apps imports this
# package, and a reload must not pay for the bench's own modules (~40 ms).
_LAZY = {
    "Summary": "report",
    "summarize": "report",
    "BenchConfig": "runner",
    "BenchResult": "runner",
    "run_bench": "runner",
    "STRATEGIES": "strategies",
    "make_strategy": "strategies",
    "ReloadTiming": "strategy",
    "Strategy": "strategy",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gapless.bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "STRATEGIES",
    "BenchConfig",
    "BenchResult",
    "ReloadTiming",
    "Strategy",
    "Summary",
    "make_strategy",
    "run_bench",
    "summarize",
]
