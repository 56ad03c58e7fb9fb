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

from .report import Summary, summarize
from .runner import BenchConfig, BenchResult, run_bench
from .strategies import STRATEGIES, make_strategy
from .strategy import ReloadTiming, Strategy

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
