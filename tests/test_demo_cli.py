"""`gapless demo`, the README's first command: load, upgrades, nothing lost."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
def test_gapless_demo_loses_no_request_over_its_reloads() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gapless.cli", "demo", "--reloads", "4", "--interval", "0.3"],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"(\d+) requests, 0 failed, 4 reloads", last)
    assert match, last
    assert int(match.group(1)) > 100
    assert result.stdout.count("old process exited after") == 4
    assert "4 slow requests spanning a reload completed" in result.stdout


def test_demo_usage_errors_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gapless.cli", "demo", "--reloads", "zero"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "'zero' is not a whole number" in result.stderr
