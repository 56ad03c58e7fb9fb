"""The command line of ``gapless run``, ``reload``, ``status`` and ``stop``: the
contract scripts rely on (output, exit codes, one-line errors)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from manager_harness import DEMO, TIMEOUT, app, gapless_argv, running, write_command

from gapless import __version__


def gapless(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gapless_argv(*args), capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd, env=env
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "gapless: error: the following arguments are required: COMMAND"),
        (["run"], "gapless run: error: missing COMMAND"),
        (["run", "--"], "gapless run: error: missing COMMAND"),
        (["run", "--bind", "x:99999", "--", "true"], "invalid bind 'x:99999': port must be"),
        (["run", "--ready", "soon", "--", "true"], "invalid --ready 'soon': use auto, notify"),
        (["run", "--ready", "delay:x", "--", "true"], "invalid --ready 'delay:x'"),
        (["run", "--ready-timeout", "-1", "--", "true"], "invalid duration '-1'"),
        (["run", "--drain-timeout", "nan", "--", "true"], "invalid duration 'nan'"),
        (["run", "--stop-signal", "NOPE", "--", "true"], "unknown signal 'NOPE'"),
        (["run", "--log-format", "xml", "--", "true"], "invalid choice: 'xml'"),
        (["reload", "--bogus"], "unrecognized argument --bogus"),
        (["status", "extra"], "unrecognized argument extra"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["upgrade", "--python"], "argument --python: expected one argument"),
    ],
)
def test_every_misuse_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = gapless(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


def test_a_missing_manager_is_exit_1_with_the_path(tmp_path: Path) -> None:
    path = str(tmp_path / "nobody.sock")
    for command in ("reload", "status", "stop"):
        result = gapless(command, "--control", path)
        assert result.returncode == 1
        assert result.stderr == (
            f"gapless: error: no gapless manager at {path}: "
            "start one with gapless run, or pass --control\n"
        )


def test_reload_prints_progress_and_exits_0_once_the_new_generation_serves(
    tmp_path: Path,
) -> None:
    with running(tmp_path, DEMO) as manager:
        result = gapless("reload", "--control", manager.control)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("generation 2 started as pid ")
    assert any(line.startswith("generation 2 ready after ") for line in lines)
    assert any(line.startswith("generation 1 draining: sent SIGTERM") for line in lines)
    assert lines[-1].startswith("reload done: generation 2 ready after ")


def test_a_failed_reload_exits_1_with_the_exit_code_and_the_childs_stderr(
    tmp_path: Path,
) -> None:
    command = tmp_path / "command.json"
    with running(tmp_path, write_command(command, DEMO)) as manager:
        write_command(command, app("exit3.py"))
        result = gapless("reload", "--control", manager.control)
        assert manager.status()["generations"][0]["state"] == "active"
    assert result.returncode == 1
    assert "gapless reload: generation 2 exited with code 3 before it was ready" in result.stderr
    assert "  | ImportError: cannot import name 'broken' from 'app'" in result.stderr


def test_status_shows_generations_listeners_and_the_last_reload(tmp_path: Path) -> None:
    with running(tmp_path, DEMO, "--drain-timeout", "30") as manager:
        assert manager.call("reload")["ok"]
        text = gapless("status", "--control", manager.control)
        data = json.loads(gapless("status", "--control", manager.control, "--json").stdout)
    assert text.returncode == 0
    assert f"manager pid {manager.process.pid}, running for" in text.stdout
    assert f"web          127.0.0.1:{manager.port}" in text.stdout
    assert "last reload: ok, generation 2 ready after" in text.stdout
    gens = {g["generation"]: g for g in data["generations"]}
    assert gens[2]["state"] == "active" and gens[2]["ready_latency"] > 0
    assert gens[2]["drain_deadline"] is None and gens[2]["pids"][0] == gens[2]["pid"]
    if 1 in gens:  # it may have drained already
        assert gens[1]["state"] == "draining" and 0 < gens[1]["drain_deadline"] <= 30
    for key in ("generation", "pid", "pids", "state", "age", "ready_latency", "drain_deadline"):
        assert key in gens[2]
    assert data["listeners"] == [{"name": "web", "address": f"127.0.0.1:{manager.port}"}]
    assert data["last_reload"]["ok"] is True and data["last_reload"]["generation"] == 2


def test_stop_drains_and_the_manager_exits_0(tmp_path: Path) -> None:
    with running(tmp_path, DEMO) as manager:
        result = gapless("stop", "--control", manager.control)
        assert manager.wait() == 0
    assert result.returncode == 0
    assert "generation 1 draining" in result.stdout
    assert result.stdout.splitlines()[-1] == "stopped"


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    # Short, as sun_path must hold the socket path (pytest's tmp_path is long).
    directory = Path(tempfile.mkdtemp())
    yield directory
    shutil.rmtree(directory)


def test_reload_without_flags_finds_the_manager_started_in_the_same_directory(
    tmp_path: Path, runtime_dir: Path
) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)}
    here = tmp_path / "app"
    here.mkdir()
    process = subprocess.Popen(
        gapless_argv("run", "--bind", "web=127.0.0.1:0", "--", *DEMO),
        cwd=here,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "generation 1 ready" in line:
                break
        assert gapless("reload", cwd=here, env=env).returncode == 0
        elsewhere = gapless("status", cwd=tmp_path, env=env)
        assert elsewhere.returncode == 1 and "no gapless manager at" in elsewhere.stderr
        second = gapless("run", "--", "true", cwd=here, env=env)
        assert second.returncode == 1
        assert "another gapless manager listens on" in second.stderr
        assert gapless("stop", cwd=here, env=env).returncode == 0
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
    assert list((runtime_dir / "gapless").iterdir()) == []


def test_a_bind_that_cannot_be_opened_is_exit_1_before_anything_starts(tmp_path: Path) -> None:
    result = gapless(
        "run", "--control", str(tmp_path / "c.sock"), "--bind", "unix:/proc/x", "--", "true"
    )
    assert result.returncode == 1
    assert result.stderr.startswith("gapless: error: cannot listen on 'unix:/proc/x'")
    assert len(result.stderr.splitlines()) == 1


def test_a_command_that_does_not_exist_ends_the_manager_with_exit_1(tmp_path: Path) -> None:
    result = gapless("run", "--control", str(tmp_path / "c.sock"), "--", "/nonexistent/server")
    assert result.returncode == 1
    assert (
        "start failed: generation 1 could not start: cannot start '/nonexistent/server': "
        "command not found" in result.stderr
    )
    assert not (tmp_path / "c.sock").exists()


def test_upgrade_execs_in_place_and_waits_until_the_new_code_answers(tmp_path: Path) -> None:
    with running(tmp_path, DEMO) as manager:
        result = gapless("upgrade", "--control", manager.control)
        pid = manager.process.pid
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            f"re-executing pid {pid} with {sys.executable}",
            f"upgraded: pid {pid} runs gapless {__version__} now",
        ]
        # A relative --python is the caller's: resolved in its directory, not the manager's.
        relative = os.path.relpath(sys.executable, tmp_path / "elsewhere")
        (tmp_path / "elsewhere").mkdir()
        again = gapless(
            "upgrade",
            "--control",
            manager.control,
            "--python",
            relative,
            cwd=tmp_path / "elsewhere",
        )
        assert again.returncode == 0, again.stderr
        refused = gapless("upgrade", "--control", manager.control, "--python", "/no/python")
        assert refused.returncode == 1
        assert refused.stderr.startswith("gapless upgrade: cannot upgrade with '/no/python'")
