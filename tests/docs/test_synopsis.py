"""The synopses list every option the parser has, and no other: docs/run.md's (run,
reload, status, stop, upgrade), gapless.cli's docstring (those and demo) and
docs/serve.md's usage (serve). Built from ``gapless.cli.build_parser``, so an option
added later without its synopsis line fails here."""

from __future__ import annotations

import argparse
import re

import pytest
from recipe_files import ROOT

import gapless.cli
from gapless.cli import build_parser

RUN_MD = ROOT / "docs" / "run.md"
SERVE_MD = ROOT / "docs" / "serve.md"
OPTION = re.compile(r"(?<![\w-])--[a-z][\w-]*")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def options(command: str) -> set[str]:
    parser = subparsers()[command]
    return {flag for action in parser._actions for flag in action.option_strings} - {
        "-h",
        "--help",
    }


def first_block_after(text: str, heading: str, fence: str = "```") -> str:
    start = text.index(heading)
    opening = text.index(fence, start)
    body_start = text.index("\n", opening) + 1
    return text[body_start : text.index(fence, body_start)]


def synopses(block: str) -> dict[str, str]:
    """Each command's synopsis text: from ``gapless NAME`` to the next such line."""
    found: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if match := re.match(r"\s*gapless (\w+)", line):
            current = match.group(1)
            found[current] = ""
        if current is not None:
            found[current] += line + "\n"
    return found


def check(synopsis: dict[str, str], commands: tuple[str, ...], where: str) -> None:
    assert set(commands) <= set(synopsis), f"{where} lacks {set(commands) - set(synopsis)}"
    for command in commands:
        written = set(OPTION.findall(synopsis[command]))
        missing = options(command) - written
        assert not missing, f"{where}: gapless {command} lacks {sorted(missing)}"
        stale = written - options(command)
        assert not stale, f"{where}: gapless {command} has no {sorted(stale)}"


def test_run_md_lists_every_option_of_run_and_the_control_commands() -> None:
    block = first_block_after(RUN_MD.read_text(), "## The command line")
    check(synopses(block), ("run", "reload", "status", "stop", "upgrade"), "docs/run.md")


def test_the_cli_docstring_lists_every_option() -> None:
    docstring = gapless.cli.__doc__ or ""
    block = docstring[docstring.index("::") : docstring.index("Exit codes")]
    commands = ("run", "reload", "status", "stop", "upgrade", "demo")
    check(synopses(block), commands, "gapless/cli.py's docstring")


def test_serve_md_lists_every_option_of_serve() -> None:
    block = first_block_after(SERVE_MD.read_text(), "## Usage")
    check(synopses(block), ("serve",), "docs/serve.md")


def test_an_option_left_out_of_a_synopsis_fails_the_check() -> None:
    block = first_block_after(RUN_MD.read_text(), "## The command line")
    with pytest.raises(AssertionError, match="--health-bind"):
        check(synopses(block.replace("[--health-bind ADDRESS]", "")), ("run",), "run.md")
