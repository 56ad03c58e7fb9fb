"""Where ``gapless demo`` writes its results when no --output is given."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(60)
def test_demo_writes_to_a_new_private_directory_by_default(tmp_path: Path) -> None:
    """A fixed /tmp path was anyone's to create first (or to plant as a symlink)."""
    planted = tmp_path / "elsewhere"
    planted.mkdir()
    (tmp_path / "gapless-demo").symlink_to(planted)
    demo = [sys.executable, "-m", "gapless.cli", "demo", "--reloads", "1", "--duration", "1"]
    result = subprocess.run(
        [*demo, "--no-wrk"],
        env=dict(os.environ, TMPDIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (stem,) = re.findall(r"result (\S+)\.json", result.stdout)
    directory = Path(stem).parent
    assert directory.parent == tmp_path and directory.name.startswith("gapless-demo-")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert Path(stem + ".json").is_file()
    assert list(planted.iterdir()) == [], "nothing is written through the planted path"
