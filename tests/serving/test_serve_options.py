"""The options of ``gapless serve``, declared once in gapless.serving.options: the
doc table and the child's command line come from that declaration, and an
option the chosen server would ignore is refused (exit 2, one line)."""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from manager_harness import TIMEOUT, gapless_argv
from prober import probe
from serve_harness import APPS, Handover

from gapless.cli import build_parser
from gapless.errors import OptionIgnoredError
from gapless.integrations.common import ServeOptions
from gapless.serving.child import build_parser as child_parser
from gapless.serving.options import (
    CHILD,
    OPTIONS,
    STACKS,
    check_honoured,
    child_argv,
    markdown_table,
    stack_of,
)

DOC = Path(__file__).parents[2] / "docs" / "serve.md"


def test_the_doc_table_is_the_declaration() -> None:
    text = DOC.read_text()
    found = re.search(r"<!-- options: begin -->\n(.*?)<!-- options: end -->", text, re.S)
    assert found, "docs/serve.md lost its options markers"
    assert found.group(1).strip() == markdown_table(), (
        "docs/serve.md is out of date: paste the output of python -m gapless.serving.options"
    )


def test_the_doc_usage_names_every_option() -> None:
    usage = DOC.read_text().split("```")[3]  # the block under "## Usage"
    assert usage.lstrip().startswith("gapless serve MODULE:APP")
    for option in OPTIONS:
        assert option.flag in usage, option.flag


GIVEN = [
    "serve", "pkg.app:make", "--interface", "wsgi", "--server", "hypercorn", "--factory",
    "--workers", "3", "--hooks", "hooks_mod", "--app", "admin=pkg.admin:app",
    "--app", "metrics=pkg.metrics:app", "--drain-timeout", "7.5", "--keep-alive", "2",
    "--read-timeout", "4", "--max-header-size", "9000", "--threads", "16",
    "--certfile", "c.pem", "--keyfile", "k.pem", "--no-access-log", "--log-level", "debug",
    "--bind", "web=127.0.0.1:0", "--control", "c.sock", "--ready-timeout", "9",
]  # fmt: skip


@pytest.mark.parametrize("argv", [GIVEN, ["serve", "a:b"]], ids=["all-set", "defaults"])
def test_the_child_gets_every_generation_option_and_no_manager_one(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    handed = child_argv(args)
    child = child_parser().parse_args(handed)
    assert child.app == args.app
    for option in OPTIONS:
        if option.scope == CHILD:
            assert getattr(child, option.name) == getattr(args, option.name), option.flag
    assert child.bind == []  # the manager keeps the sockets and passes them as LISTEN_FDS
    for flag in ("--control", "--ready-timeout"):
        assert flag not in handed


@pytest.mark.parametrize("stack", list(STACKS))
def test_each_option_is_refused_exactly_where_it_is_not_honoured(stack: str) -> None:
    interface, _, server = stack.partition("-")
    interface, server = (
        ("wsgi", server) if server else ({"aiohttp": "aiohttp"}.get(stack, "asgi"), stack)
    )
    assert stack_of(interface, server) == stack
    for option in OPTIONS:
        if option.scope != CHILD or not option.servers:
            continue
        value = {"--http": "h11", "--server": "hypercorn"}.get(option.flag, 3)
        if option.flag == "--server" and server == "hypercorn":
            continue  # --server hypercorn is what chose this stack
        values = {option.name: value}
        if stack in option.servers:
            check_honoured(values, interface, server)
        else:
            with pytest.raises(OptionIgnoredError, match=f"^{option.flag} is ignored by "):
                check_honoured(values, interface, server)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--server", "hypercorn", "--http", "h11"], "--http is ignored by hypercorn"),
        (["--interface", "aiohttp", "--server", "hypercorn"], "--server is ignored by aiohttp"),
        (["--interface", "asgi", "--threads", "4"], "--threads is ignored by uvicorn"),
        (["--interface", "wsgi", "--ws-grace", "2"], "--ws-grace is ignored by WSGI on uvicorn"),
        (
            ["--interface", "asgi", "--server", "hypercorn", "--limit-concurrency", "5"],
            "--limit-concurrency is ignored by hypercorn: drop it (it applies to uvicorn, ",
        ),
    ],
)
def test_an_ignored_option_is_exit_2_and_one_line(
    tmp_path: Path, args: Sequence[str], message: str
) -> None:
    argv = gapless_argv(
        "serve", "serve_app:app", *args, "--bind", "127.0.0.1:0",
        "--control", str(tmp_path / "c.sock"),
    )  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=APPS)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gapless serve: error: {message}"), lines


def test_a_generation_refuses_an_option_its_detected_server_ignores() -> None:
    argv = [sys.executable, "-m", "gapless.serving.child", "serve_aiohttp_app:app"]
    argv += ["--bind", "127.0.0.1:0", "--http", "h11", "--no-access-log"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=15, cwd=APPS)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "gapless serve: error: --http is ignored by aiohttp: drop it "
        "(it applies to uvicorn, WSGI on uvicorn)"
    )


def test_gapless_serve_reports_the_option_a_detected_server_ignores(tmp_path: Path) -> None:
    argv = gapless_argv(
        "serve", "serve_aiohttp_app:app", "--threads", "4", "--bind", "127.0.0.1:0",
        "--control", str(tmp_path / "c.sock"),
    )  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=APPS)
    assert result.returncode == 1
    assert "start failed: generation 1 exited with code 2" in result.stderr
    assert "--threads is ignored by aiohttp" in result.stderr


def test_gapless_serve_from_python_refuses_an_ignored_option() -> None:
    import gapless.serving.child  # binds gapless.serving, not gapless.serve

    assert callable(gapless.serve)
    with pytest.raises(OptionIgnoredError, match=r"^--http is ignored by hypercorn"):
        gapless.serve("a:b", server="hypercorn", interface="asgi", options=ServeOptions(http="h11"))


def test_no_option_is_turned_back_into_argv_through_argparse_internals() -> None:
    parser = argparse.ArgumentParser()
    assert hasattr(parser, "_actions")  # the private API this replaced
    source = Path(sys.modules[child_argv.__module__].__file__ or "").read_text()
    assert "_actions" not in source and "_AppendAction" not in source


def test_aiohttp_honours_the_access_log_and_log_level() -> None:
    argv = [sys.executable, "-m", "gapless.serving.child", "serve_aiohttp_app:app"]
    with Handover(argv) as handover:
        handover.capture_stderr = True
        child = handover.start()
        assert probe(http.client.HTTPConnection("127.0.0.1", handover.port, timeout=5)) is None
        child.send_signal(signal.SIGTERM)
        assert child.wait(TIMEOUT) is not None
        assert child.stderr_fd is not None
        log = b""
        while chunk := os.read(child.stderr_fd, 65536):
            log += chunk
    assert b'"GET / HTTP/1.1" 200' in log, log.decode(errors="replace")
    assert b"serving aiohttp on" in log and b"with uvicorn" not in log
