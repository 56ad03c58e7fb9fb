"""docs/deploy.md stays true: its systemd units pass ``systemd-analyze verify`` (systemd
is installed here but is not PID 1), every gapless command line in it parses, and
every test it cites exists."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gapless.cli import build_parser

DOC = Path(__file__).parents[2] / "docs" / "deploy.md"
TESTS = Path(__file__).parents[1]
GAPLESS = str(Path(sys.executable).parent / "gapless")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def units() -> dict[str, str]:
    found = {}
    for block in blocks("ini"):
        if match := re.match(r"# file: (\S+\.service)", block):
            found[match.group(1)] = block
    return found


def systemd_version() -> int:
    output = subprocess.run(["systemctl", "--version"], capture_output=True, text=True).stdout
    match = re.match(r"systemd (\d+)", output)
    return int(match.group(1)) if match else 0


def test_the_doc_has_a_recipe_for_each_supervisor_systemd_docker_and_kubernetes() -> None:
    text = DOC.read_text()
    for heading in ("daemontools", "runit", "s6", "supervisord", "systemd", "Docker", "Kubernetes"):
        assert re.search(rf"^##+ {heading}\b", text, re.M), heading
    assert {"app.service", "app-systemd252.service"} <= set(units())


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
@pytest.mark.parametrize("name", sorted(units()))
def test_the_units_pass_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    unit = tmp_path / name
    unit.write_text(units()[name].replace("/usr/local/bin/gapless", GAPLESS))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = result.stderr.splitlines()
    if systemd_version() < 253:  # Type=notify-reload and ReloadSignal= came in 253
        problems = [
            line
            for line in problems
            if "ignoring: notify-reload" not in line and "Unknown key 'ReloadSignal'" not in line
        ]
    assert result.returncode == 0 and problems == [], result.stderr


def command_lines() -> list[list[str]]:
    """Every ``gapless run ...`` in the doc's shell, ini and yaml blocks, as argv."""
    text = "\n".join(blocks("sh") + blocks("ini") + blocks("dockerfile"))
    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if match := re.search(r"gapless (run|reload) .*", line):
            found.append(shlex.split(match.group(0))[1:])
    return found


def test_every_gapless_command_line_in_the_doc_parses() -> None:
    lines = command_lines()
    assert len(lines) >= 7
    parser = build_parser()
    for argv in lines:
        parser.parse_args(argv)  # exits with status 2 on a bad flag


def test_every_test_the_doc_cites_exists() -> None:
    cited = re.findall(r"tests/((?:\w+/)?test_\w+\.py)(?:::(test_\w+))?", DOC.read_text())
    assert cited
    for file, function in cited:
        source = (TESTS / file).read_text()
        assert not function or f"def {function}(" in source, f"{file}::{function}"
