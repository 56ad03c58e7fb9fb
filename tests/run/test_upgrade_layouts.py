"""``gapless upgrade`` from a manager of the previous package layout (flat modules,
before the grouping into proc/, sockets/, systemd/, library/, run/, serve/).

A running manager execs ``python -m gapless.reexec FD`` of the *installed* gapless,
and its generations run whatever command it was given, ``python -m
gapless.serve_child`` for ``gapless serve``. Both module paths are the wire between
versions: this test runs the flat layout's manager from its own commit, upgrades
it in place to the code under test, and reloads onto it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import get
from manager_harness import APPS, running

import gapless

# The last commit of the flat layout; its manager writes state version 1.
FLAT_LAYOUT = "89f2477"
REPO = Path(__file__).resolve().parents[2]
SOURCE = Path(gapless.__file__).resolve().parents[1]


def _flat_layout(into: Path) -> Path:
    """The flat layout's src/, extracted from git history."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to read the flat layout from history")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", FLAT_LAYOUT, "src/gapless"],
        capture_output=True,
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {FLAT_LAYOUT} is not in this clone (shallow?): {archive.stderr!r}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def _python_with(path: Path, pythonpath: str) -> Path:
    """An interpreter path that runs this Python on ``pythonpath``: a new virtualenv."""
    path.write_text(f'#!/bin/sh\nPYTHONPATH={pythonpath} exec {sys.executable} "$@"\n')
    path.chmod(0o755)
    return path


def test_a_flat_layout_manager_upgrades_in_place_and_reloads_serve_child(
    tmp_path: Path,
) -> None:
    flat = _flat_layout(tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{flat}:{APPS}"}
    command = [sys.executable, "-m", "gapless.serve_child", "serve_app:app", "--no-access-log"]
    with running(tmp_path, command, env=env) as manager:
        first = get(manager.port)
        assert first.status == 200, first
        before = manager.status()
        assert before["manager"]["upgrades"] == 0
        new_python = _python_with(tmp_path / "python-new", f"{SOURCE}:{APPS}")

        answer = manager.call("upgrade", python=str(new_python))
        assert answer["ok"], answer
        manager.wait_line(rf"resumed in place as pid {manager.process.pid}")
        after = manager.status()
        assert after["manager"]["pid"] == manager.process.pid
        assert after["manager"]["upgrades"] == 1
        assert [g["pid"] for g in after["generations"]] == [g["pid"] for g in before["generations"]]
        assert get(manager.port).body == first.body  # generation 1 kept serving

        reloaded = manager.call("reload")
        assert reloaded["ok"], reloaded
        second = get(manager.port)
        assert second.status == 200 and second.body != first.body, second
        manager.call("stop")
        assert manager.wait() == 0
