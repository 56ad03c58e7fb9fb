"""`gapless demo`, the README's first command: load, upgrades, nothing lost."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(60)
def test_gapless_demo_loses_no_request_over_its_reloads(tmp_path: Path) -> None:
    demo = [sys.executable, "-m", "gapless.cli", "demo", "--reloads", "3", "--duration", "4"]
    result = subprocess.run(
        [*demo, "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    match = re.fullmatch(r"(\d+) requests, 0 failed, 3 reloads", lines[-1])
    assert match, lines[-1]
    assert int(match.group(1)) > 300
    assert lines[0].startswith("gapless demo: python -m gapless.demo under 4 s of load")
    assert "failures per reload: prober 0.0" in result.stdout
    (stem,) = re.findall(r"result (\S+)\.json", result.stdout)
    record = json.loads(Path(stem + ".json").read_text())
    assert record["config"]["strategy"] == "library"
    assert len(record["reloads"]) == 3
    if "timeline" in result.stdout:  # matplotlib installed
        assert Path(stem + ".png").stat().st_size > 0


def test_demo_usage_errors_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gapless.cli", "demo", "--reloads", "zero"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "'zero' is not a whole number" in result.stderr


def test_demo_duration_and_interval_exclude_each_other() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gapless.cli", "demo", "--duration", "5", "--interval", "1"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr
