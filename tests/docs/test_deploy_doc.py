"""docs/deploy.md shows the recipe files of docs/recipes as they are (so the doc and
the tested files cannot drift), its systemd units pass ``systemd-analyze verify``
(systemd is installed here but is not PID 1), every gapless command line in the
recipes parses, and every test the doc cites exists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from recipe_files import DEPLOY, RECIPES, ROOT, VENV_BIN, recipe_files, shell_gapless_lines

from gapless.cli import build_parser

#: A fenced block, with the line before it: ``[docs/recipes/X](recipes/X):`` for a recipe.
FENCE = re.compile(r"([^\n]*)\n\n```(\w*)\n(.*?)```", re.S)
LINK = re.compile(r"\[docs/recipes/(\S+)\]\(recipes/\1\):")
#: Blocks that are no recipe: output, a formula.
NOT_RECIPES = ("text", "")


def shown() -> dict[str, str]:
    """The recipe blocks of deploy.md by file, checking each is introduced by its link."""
    found = {}
    for before, language, body in FENCE.findall(DEPLOY.read_text()):
        if language in NOT_RECIPES:
            continue
        link = LINK.fullmatch(before)
        assert link, f"a {language} block not introduced by its file's link: {before!r}"
        found[link.group(1)] = body
    return found


def test_every_block_of_the_doc_equals_its_recipe_file() -> None:
    blocks = shown()
    assert len(blocks) >= 10
    for name, body in blocks.items():
        assert body == (RECIPES / name).read_text(), f"docs/deploy.md shows an old {name}"


def test_every_recipe_file_is_linked_from_the_doc() -> None:
    text = DEPLOY.read_text()
    for path in recipe_files():
        name = path.relative_to(RECIPES).as_posix()
        assert f"](recipes/{name})" in text, f"docs/deploy.md does not show {name}"


def test_the_doc_has_a_recipe_for_each_supervisor_systemd_docker_and_kubernetes() -> None:
    text = DEPLOY.read_text()
    for heading in ("daemontools", "runit", "s6", "supervisord", "systemd", "Docker", "Kubernetes"):
        assert re.search(rf"^##+ {heading}\b", text, re.M), heading


def test_the_supervisors_run_files_are_executable_shell() -> None:
    for name in ("daemontools/run", "runit/run", "s6/run"):
        path = RECIPES / name
        assert path.read_text().startswith("#!/bin/sh\n"), name  # the shebang comes first
        assert path.stat().st_mode & 0o111, f"{name} is not executable"
        subprocess.run(["sh", "-n", str(path)], check=True, timeout=10)


def systemd_version() -> int:
    output = subprocess.run(["systemctl", "--version"], capture_output=True, text=True).stdout
    match = re.match(r"systemd (\d+)", output)
    return int(match.group(1)) if match else 0


SERVICES = ("systemd/gapless-app.service", "systemd/systemd252/gapless-app.service")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
@pytest.mark.parametrize("service", SERVICES)
def test_the_units_pass_systemd_analyze_verify(tmp_path: Path, service: str) -> None:
    # verify wants ExecStart's binary to exist: this venv's gapless stands in for /opt/app's.
    real = str(Path(sys.executable).parent) + "/"
    units = []
    for name in (service, "systemd/gapless-app.socket"):
        unit = tmp_path / Path(name).name
        unit.write_text((RECIPES / name).read_text().replace(VENV_BIN, real))
        units.append(str(unit))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
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


def test_every_gapless_command_line_in_the_recipes_parses() -> None:
    lines = [argv for path in recipe_files() for argv in shell_gapless_lines(path.read_text())]
    assert len(lines) >= 7
    parser = build_parser()
    for argv in lines:
        parser.parse_args(argv[1:])  # exits with status 2 on a bad option


def test_every_test_the_doc_cites_exists() -> None:
    text = DEPLOY.read_text()
    cited = re.findall(r"tests/((?:\w+/)?test_\w+\.py)(?:::(test_\w+))?", text)
    assert cited
    for file, function in cited:
        source = (ROOT / "tests" / file).read_text()
        assert not function or f"def {function}(" in source, f"{file}::{function}"
