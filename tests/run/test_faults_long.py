"""The long run, CI-sized: 30 reloads in a row under load lose nothing and leak nothing.

bench/long_run.py does 1,000 (docs/reliability.md has the figures); this runs
the same script for 30 reloads and checks its samples of the manager: no failed
request, the same number of open fds every 10 reloads, no zombie.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "bench" / "long_run.py"


@pytest.mark.timeout(240)
def test_30_reloads_under_load_fail_nothing_and_leak_no_fd_and_no_zombie() -> None:
    options = ["--reloads", "30", "--every", "10", "--probers", "2", "--json"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *options],
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert result.returncode in (0, 1), result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    samples, summary = records[:-1], records[-1]["summary"]
    assert [s["reloads"] for s in samples] == [0, 10, 20, 30]
    assert summary["failures"] == [] and samples[-1]["answered"] > 0
    assert {s["fds"] for s in samples} == {samples[0]["fds"]}, samples
    assert {s["zombies"] for s in samples} == {0}, samples
    assert samples[-1]["rss_kb"] - samples[1]["rss_kb"] < 1024, samples
    assert result.returncode == 0
