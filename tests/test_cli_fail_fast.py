"""Misuses of the ``gapless`` command line fail at once, before a socket is bound
or a generation started: exit 2 and one line naming the input and the fix
(issue 13, "Fail fast, before binding")."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from manager_harness import TIMEOUT, gapless_argv
from serve_harness import APPS

from gapless.bench.cli import build_parser as build_bench_parser
from gapless.cli import build_parser
from gapless.cli_args import delay, positive_seconds
from gapless.serving.options import seconds


def _gapless(
    *args: str, env: dict[str, str] | None = None, argv: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv or gapless_argv(*args),
        capture_output=True, text=True, timeout=TIMEOUT, cwd=APPS, env=env,
    )  # fmt: skip


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("app", "message"),
    [
        (
            "nosuchmodule:app",
            "gapless serve: error: no module 'nosuchmodule' for 'nosuchmodule:app'",
        ),
        ("nocolon", "gapless serve: error: invalid application 'nocolon': write MODULE:APP"),
        ("serve_app:", "gapless serve: error: invalid application 'serve_app:': write MODULE:APP"),
    ],
)
def test_a_bad_application_fails_before_binding(tmp_path: Path, app: str, message: str) -> None:
    path = tmp_path / "web.sock"
    line = _one_line(_gapless("serve", app, "--bind", f"unix:{path}"))
    assert line.startswith(message), line
    assert not path.exists()  # no socket was bound


def test_a_missing_hooks_module_or_named_app_fails_before_binding(tmp_path: Path) -> None:
    path = tmp_path / "web.sock"
    bind = ["--bind", f"unix:{path}", "--bind", f"admin=unix:{tmp_path}/admin.sock"]
    line = _one_line(_gapless("serve", "serve_app:app", *bind, "--hooks", "nosuchhooks"))
    assert line.startswith("gapless serve: error: no module 'nosuchhooks' for '--hooks"), line
    line = _one_line(_gapless("serve", "serve_app:app", *bind, "--app", "admin=nosuchadmin:app"))
    assert line.startswith("gapless serve: error: no module 'nosuchadmin' for '--app"), line
    assert not path.exists()


def test_finding_a_module_imports_nothing(tmp_path: Path) -> None:
    from gapless.serving.cli import missing_module

    package = tmp_path / "loud"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "web.py").write_text("raise RuntimeError('imported')\n")
    assert missing_module("loud.web", str(tmp_path)) is None
    assert missing_module("loud.nosuch", str(tmp_path)) == "loud.nosuch"
    assert missing_module("nosuch.web", str(tmp_path)) == "nosuch"
    assert "loud" not in sys.modules


def test_missing_uvicorn_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    (tmp_path / "uvicorn.py").write_text("raise ImportError('no uvicorn here')\n")
    paths = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    args = ["serve", "serve_app:app", "--bind", f"unix:{tmp_path}/web.sock"]
    line = _one_line(_gapless(*args, "--interface", "asgi", env=env))
    assert line == "gapless serve: uvicorn is not installed: pip install 'gapless[serve]'"
    # Detected, an aiohttp application would need no uvicorn: aiohttp is installed here.
    line = _one_line(_gapless(*args, env=env))
    assert line == (
        "gapless serve: uvicorn is not installed: pip install 'gapless[serve]' "
        "(an aiohttp application: --interface aiohttp)"
    )
    assert not (tmp_path / "web.sock").exists()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["serve", "--drain-timout", "5", "serve_app:app"],
            "gapless serve: error: unrecognized argument --drain-timout; "
            "did you mean --drain-timeout?",
        ),
        (
            ["run", "--ready-timout=5", "--", "true"],
            "gapless run: error: unrecognized argument --ready-timout=5; "
            "did you mean --ready-timeout?",
        ),
        (
            ["status", "--zzz"],
            "gapless status: error: unrecognized argument --zzz; see gapless status --help",
        ),
    ],
)
def test_an_unknown_option_names_the_subcommand_and_the_nearest(args: list[str], line: str) -> None:
    assert _one_line(_gapless(*args)) == line


@pytest.mark.parametrize(
    ("text", "value"),
    [("30", 30.0), ("0.5", 0.5), ("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), ("1.5s", 1.5)],
)
def test_durations_take_a_unit(text: str, value: float) -> None:
    for parse in (positive_seconds, delay, seconds):
        assert parse(text) == value


@pytest.mark.parametrize("text", ["5x", "ms", "-1s", "", "inf", "nan", "1e9s"])
def test_a_bad_duration_is_refused(text: str) -> None:
    for parse in (positive_seconds, delay, seconds):
        with pytest.raises(argparse.ArgumentTypeError, match=r"e\.g\. 500ms, 30s, 2m"):
            parse(text)


def test_every_seconds_option_takes_a_duration() -> None:
    parser = build_parser()
    run = parser.parse_args(
        ["run", "--drain-timeout", "2m", "--ready-timeout", "500ms", "--handoff-timeout", "3s",
         "--shutdown-delay", "1m", "--", "true"]
    )  # fmt: skip
    assert (run.drain_timeout, run.ready_timeout) == (120.0, 0.5)
    assert (run.handoff_timeout, run.shutdown_delay) == (3.0, 60.0)
    serve = parser.parse_args(
        ["serve", "app:app", "--drain-timeout", "1m", "--keep-alive", "500ms",
         "--ready-timeout", "2m", "--ws-grace", "250ms", "--read-timeout", "10s"]
    )  # fmt: skip
    assert (serve.drain_timeout, serve.keep_alive, serve.ready_timeout) == (60.0, 0.5, 120.0)
    assert (serve.ws_grace, serve.read_timeout) == (0.25, 10.0)
    demo = parser.parse_args(["demo", "--duration", "1m"])
    assert demo.duration == 60.0
    bench = build_bench_parser().parse_args(
        ["--seconds", "1m", "--timeout", "90s", "--reload-every", "500ms"]
    )
    assert (bench.duration, bench.timeout, bench.reload_every) == (60.0, 90.0, 0.5)


def test_a_bad_duration_on_the_command_line_is_one_line() -> None:
    line = _one_line(_gapless("serve", "serve_app:app", "--drain-timeout", "5x"))
    assert line.startswith("gapless serve: error: argument --drain-timeout: invalid duration '5x'")


def test_python_m_gapless_is_gapless() -> None:
    from gapless import __version__

    result = _gapless(argv=[sys.executable, "-m", "gapless", "--version"])
    assert (result.returncode, result.stdout.strip()) == (0, f"gapless {__version__}")
    assert _one_line(_gapless(argv=[sys.executable, "-m", "gapless", "serve", "nocolon"]))
