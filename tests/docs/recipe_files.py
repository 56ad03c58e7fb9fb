"""The recipes of docs/recipes, read as their tools read them: the Dockerfile as
instructions, the manifests as YAML, and every ``gapless run`` in them as the
arguments ``gapless.cli.build_parser`` makes of it. Shared by the tests of this
directory."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from gapless.cli import build_parser

ROOT = Path(__file__).parents[2]
RECIPES = ROOT / "docs" / "recipes"
DEPLOY = ROOT / "docs" / "deploy.md"
#: The one venv every recipe runs gapless and the server from.
VENV_BIN = "/opt/app/.venv/bin/"
#: The one name of the service in every recipe.
APP = "gapless-app"


def recipe_files() -> list[Path]:
    files = (path for path in RECIPES.rglob("*") if path.is_file())
    return sorted(path for path in files if "__pycache__" not in path.parts)


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments dropped."""
    text = (RECIPES / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def exec_form(arguments: str) -> list[str]:
    """The argv of an exec-form instruction (``CMD ["a", "b"]``); fails on shell form."""
    argv = json.loads(arguments)
    assert isinstance(argv, list) and all(isinstance(each, str) for each in argv), arguments
    return argv


def load_yaml(relative: str) -> Any:
    return yaml.safe_load((RECIPES / relative).read_text())


def container(manifest: Any) -> dict[str, Any]:
    containers = manifest["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def gapless_args(argv: list[str]) -> argparse.Namespace:
    """What ``gapless`` makes of ``argv`` (which starts with the gapless binary);
    exits with status 2 on a bad option."""
    assert argv[0] == VENV_BIN + "gapless", argv[0]
    return build_parser().parse_args(argv[1:])


def command(args: argparse.Namespace) -> list[str]:
    """The COMMAND of a parsed ``gapless run``."""
    return list(args.argv[1:] if args.argv[:1] == ["--"] else args.argv)


def shell_gapless_lines(text: str) -> list[list[str]]:
    """Every ``gapless run|reload ...`` command line in a shell, ini or unit text, as
    argv from the gapless binary on (``chpst -u app`` and the like dropped)."""
    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith(("#", ";")):
            continue
        if match := re.search(r"[^\s=]*gapless (run|reload)\b.*", line):
            found.append(shlex.split(match.group(0)))
    return found
