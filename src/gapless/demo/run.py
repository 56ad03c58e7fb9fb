"""``gapless demo``: the demo server reloaded again and again under load, nothing lost.

A ``gapless bench`` run with the README's defaults: ``python -m gapless.demo`` (an
HTTP server on the standard library, in library mode) gets its socket as systemd
would hand it over (LISTEN_FDS) and upgrades itself on each SIGUSR2: the successor
starts beside it, says READY=1 with its MAINPID, and only then does the old process
stop accepting and finish what it holds. Meanwhile the bench's open-loop prober
records every request, and wrk, when it is installed, saturates the server. The
report ends with ``<N> requests, <F> failed, <R> reloads``.

Library mode shows the handover at its plainest: one process hands the socket to
the next, with no manager in between, and the demo server's cold start (about
0.2 s) is all a reload costs.

Example::

    summary = run_demo(reloads=3, duration=5.0)   # results in a new temporary directory
    assert summary.failed == 0
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import TextIO

from ..bench.plot import write_png
from ..bench.report import Summary, format_summary, summarize, write_json
from ..bench.runner import BenchConfig, run_bench

__all__ = ["DEFAULT_DURATION", "DEFAULT_OUTPUT", "DEFAULT_RELOADS", "run_demo"]

DEFAULT_RELOADS = 10
DEFAULT_DURATION = 15.0
# None: a new directory from tempfile.mkdtemp, private to this user. A fixed
# name under /tmp is anyone's to create first, or to plant as a symlink.
DEFAULT_OUTPUT: str | None = None


def run_demo(
    *,
    reloads: int = DEFAULT_RELOADS,
    duration: float = DEFAULT_DURATION,
    output: str | None = DEFAULT_OUTPUT,
    wrk: bool | None = None,
    out: TextIO = sys.stdout,
) -> Summary:
    """Run the demo server under load through ``reloads`` evenly spaced upgrades.

    Args:
        reloads: how many SIGUSR2 upgrades.
        duration: seconds of load (longer if the reloads run late).
        output: the directory for the JSON result and the PNG timeline; None: a new
            one (``gapless-demo-*`` in the temporary directory, mode 0700).
        wrk: use wrk alongside the prober; None: when it is installed.
        out: where the report goes.

    Returns:
        The run's summary; ``summary.failed`` counts every failed request.

    Raises:
        BenchError: the demo server did not start or a reload did not complete.
        OSError: ``output`` cannot be written.
    """
    print(
        f"gapless demo: python -m gapless.demo under {duration:g} s of load, upgraded "
        f"{reloads} times with SIGUSR2; every request is counted",
        file=out,
        flush=True,
    )
    config = BenchConfig(strategy="library", reloads=reloads, duration=duration, wrk=wrk)
    result = run_bench(config)
    summary = summarize(result)
    if output is None:
        output = tempfile.mkdtemp(prefix="gapless-demo-")
    else:
        os.makedirs(output, exist_ok=True)
    stem = os.path.join(output, f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    write_json(result, summary, stem + ".json")
    missing = write_png(result, summary, stem + ".png")
    result.notes.append(f"result {stem}.json; " + (missing or f"timeline {stem}.png"))
    print(format_summary(result, summary), file=out, flush=True)
    return summary
