"""Every ``gapless`` command line shown in the README and docs/ parses with the
parser the CLI uses, so an option renamed or removed fails here, not in a
user's shell. Synopsis lines (``[--bind ...]``) and placeholders (``MODULE:APP``)
are not commands and are left out."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from gapless.bench.cli import build_parser as bench_parser
from gapless.cli import build_parser

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SUBCOMMANDS = ("run", "serve", "reload", "status", "stop", "upgrade", "demo", "bench")
# At the start of a line, after a prompt, or as a path's last part (ExecStart=,
# CMD [...]); output lines such as "gapless serve: ..." are not commands.
_COMMAND = re.compile(rf"^(?:\s*\$ |\s*|.*/)(gapless (?:{'|'.join(SUBCOMMANDS)})(?=\s|$).*)")
_PLACEHOLDER = re.compile(r"\[-|\.\.\.|…|MODULE:APP|COMMAND \[|<[a-z]")


def code_lines(text: str) -> list[str]:
    """The lines of fenced code blocks, with backslash continuations joined;
    blocks tagged as output (``text``) or as another language are left out."""
    lines: list[str] = []
    for tag, block in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if tag not in ("text", "python"):
            lines.extend(block.replace("\\\n", " ").splitlines())
    return lines


def commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for line in code_lines(doc.read_text()):
            match = _COMMAND.search(line.split(" #", 1)[0])
            if match and not _PLACEHOLDER.search(match.group(1)):
                found.append((doc.name, match.group(1).strip()))
    return found


def test_the_docs_show_commands_of_every_kind() -> None:
    shown = {command.split()[1] for _, command in commands()}
    assert {"run", "serve", "reload", "status"} <= shown


@pytest.mark.parametrize(("doc", "command"), commands())
def test_a_documented_command_parses(doc: str, command: str) -> None:
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        pytest.fail(f"{doc}: not a shell line: {command}")
    # The command ends where the shell's next one begins (&&, |, ;, &, a redirection).
    ends = [i for i, token in enumerate(tokens) if token and set(token) <= set("&|;<>()")]
    argv = tokens[1 : ends[0] if ends else None]
    try:
        if argv[0] == "bench":
            bench_parser().parse_args(argv[1:])
        else:
            parsed = build_parser().parse_args(argv)
            assert isinstance(parsed, argparse.Namespace)
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{command}` does not parse (exit {exc.code})")
