"""Every misuse of the command line: one line naming the problem, exit code 2.

Table-driven over every subcommand and option; tests/run/test_cli_run.py has the
first cases of the same contract (run as subprocesses), not repeated here.
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

from gapless.cli import main

CONTROL_COMMANDS = ("reload", "status", "stop", "upgrade")

MISUSES: list[tuple[list[str], str]] = [
    (["--bogus"], "gapless: error: the following arguments are required: COMMAND"),
    (["run", "--bogus", "--", "true"], "gapless run: error: unrecognized argument --bogus"),
    (["run", "--bind"], "argument --bind: expected one argument"),
    (["run", "--bind", "", "--", "true"], "invalid bind '': empty address"),
    (["run", "--bind", "web=", "--", "true"], "invalid bind 'web=': empty address"),
    (["run", "--bind", "unix:", "--", "true"], "invalid bind 'unix:': empty unix socket path"),
    (["run", "--bind", "fd://x", "--", "true"], "invalid bind 'fd://x': fd must be"),
    (["run", "--bind", "::1:80", "--", "true"], "an IPv6 address must be written in brackets"),
    (["run", "--control"], "argument --control: expected one argument"),
    (["run", "--control", "", "--", "true"], "argument --control: empty path"),
    (["run", "--pid-file"], "argument --pid-file: expected one argument"),
    (["run", "--pid-file", "", "--", "true"], "argument --pid-file: empty path"),
    (["run", "--ready"], "argument --ready: expected one argument"),
    (["run", "--ready", "delay:-1", "--", "true"], "invalid --ready 'delay:-1'"),
    (["run", "--ready", "delay:inf", "--", "true"], "invalid --ready 'delay:inf'"),
    (["run", "--ready-timeout", "0", "--", "true"], "invalid duration '0': give seconds above 0"),
    (["run", "--ready-timeout", "abc", "--", "true"], "invalid duration 'abc'"),
    (["run", "--drain-timeout", "inf", "--", "true"], "invalid duration 'inf'"),
    (["run", "--drain-timeout", "-5", "--", "true"], "invalid duration '-5'"),
    (["run", "--drain-timeout"], "argument --drain-timeout: expected one argument"),
    (["run", "--stop-signal", "0", "--", "true"], "unknown signal '0'"),
    (["run", "--stop-signal", "99", "--", "true"], "unknown signal '99'"),
    (["run", "--stop-signal"], "argument --stop-signal: expected one argument"),
    (["run", "--log-format"], "argument --log-format: expected one argument"),
    (["run", "--handoff-timeout", "x", "--", "true"], "invalid duration 'x'"),
    (["run", "--shutdown-delay", "-1", "--", "true"], "--shutdown-delay: invalid duration '-1'"),
    (["run", "--health-bind", "x:99999", "--", "true"], "invalid bind 'x:99999'"),
    *[
        ([cmd, "--control"], "argument --control: expected one argument")
        for cmd in CONTROL_COMMANDS
    ],
    *[([cmd, "--control", ""], "argument --control: empty path") for cmd in CONTROL_COMMANDS],
    *[([cmd, "extra"], "unrecognized argument extra") for cmd in CONTROL_COMMANDS],
    (["stop", "--json"], "unrecognized argument --json"),
    (["reload", "--json"], "unrecognized argument --json"),
    (["upgrade", "--python", ""], "argument --python: empty path"),
    (["demo", "--reloads", "0"], "argument --reloads: '0' must be at least 1"),
    (["demo", "--reloads", "x"], "argument --reloads: 'x' is not a whole number"),
    (["demo", "--interval", "-1"], "argument --interval: invalid duration '-1'"),
    (["demo", "--interval", "nan"], "argument --interval: invalid duration 'nan'"),
    (["demo", "--duration", "0"], "argument --duration: invalid duration '0'"),
    (["demo", "--output"], "argument --output: expected one argument"),
    (["demo", "extra"], "unrecognized argument extra"),
]


def gapless(args: list[str]) -> tuple[int, str, str]:
    """``gapless ARGS`` in a forked child of this interpreter: the parser is the real
    one and an interpreter start per case is saved. Returns (code, stdout, stderr)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 70
            try:
                sys.stdout, sys.stderr = out, err
                code = main(args)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            finally:
                out.flush()
                err.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read(), err.read()


@pytest.mark.parametrize(("args", "message"), MISUSES, ids=[" ".join(a) for a, _ in MISUSES])
def test_every_misuse_is_one_line_naming_it_and_exit_2(args: list[str], message: str) -> None:
    code, stdout, stderr = gapless(args)
    assert code == 2, stderr
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gapless"), lines[0]
    assert message in lines[0]
    assert lines[0].endswith("--help")  # and where to read more
