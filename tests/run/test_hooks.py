"""``gapless run``'s hooks (gapless.run.hooks), with a real manager: each hook writes
what it saw to a file, and every wait is on a line of the manager's log."""

from __future__ import annotations

import json
import os
import re
import select
import selectors
import shlex
import signal
import subprocess
from pathlib import Path

from harness import alive, wait_exit
from lines import read_line
from manager_harness import DEMO, PYTHON, TIMEOUT, Prober, app, gapless_argv, running, write_command

from gapless.cli import build_parser
from gapless.run.eventlog import EventLog
from gapless.run.hooks import HookRun


def _env_of(path: Path) -> dict[str, str]:
    """The ``GAPLESS_*`` variables of an ``env`` dump."""
    pairs = (line.partition("=") for line in path.read_text().splitlines())
    return {key: value for key, _, value in pairs if key.startswith("GAPLESS_")}


def _reload_cli(control: str) -> subprocess.CompletedProcess[str]:
    argv = gapless_argv("reload", "--control", control)
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def test_a_failing_before_reload_hook_vetoes_the_reload_and_the_old_generation_serves(
    tmp_path: Path,
) -> None:
    hook = "echo checking; echo 'bad config line 3' >&2; exit 1"
    with (
        running(tmp_path, DEMO, "--before-reload", hook) as manager,
        Prober(manager.port) as prober,
    ):
        done = _reload_cli(manager.control)
        manager.wait_line(r"^gapless\[\d+\]: \[hook before-reload\] checking$")
        prober.wait_answers(prober.answered + 3)  # and it still serves after
        status = manager.status()
    assert done.returncode == 1
    assert (
        f"gapless reload: generation 2 not started: before-reload hook `{hook}` exited 1: "
        "bad config line 3\n" in done.stderr
    )
    assert [(g["generation"], g["state"]) for g in status["generations"]] == [(1, "active")]
    assert status["last_reload"]["ok"] is False
    assert not any("generation 2 started" in line for line in manager.lines)
    assert prober.failures == []


def test_a_passing_before_reload_hook_runs_to_its_end_before_the_generation_starts(
    tmp_path: Path,
) -> None:
    seen = tmp_path / "before.env"
    hook = f"env > {shlex.quote(str(seen))}; echo checked"
    with running(tmp_path, DEMO, "--before-reload", hook) as manager:
        old = manager.status()["generations"][0]["pid"]
        answer = manager.call("reload")
        assert answer["ok"], answer
        order = [
            manager.wait_line(r"\[hook before-reload\] checked$"),
            manager.wait_line(r"before-reload hook .* exited 0 after \d+ ms"),
            manager.wait_line(r"generation 2 started as pid"),
        ]
    assert [match.string for match in order] == [
        line for line in manager.lines if any(match.string == line for match in order)
    ]
    env = _env_of(seen)
    assert env["GAPLESS_EVENT"] == "before-reload"
    assert env["GAPLESS_GENERATION"] == "2"
    assert env["GAPLESS_PID"] == str(old)  # the generation serving meanwhile
    assert env["GAPLESS_MANAGER_PID"] == str(manager.process.pid)
    assert "GAPLESS_REASON" not in env


def test_the_replacement_of_a_generation_that_died_does_not_wait_for_before_reload(
    tmp_path: Path,
) -> None:
    with running(tmp_path, DEMO, "--before-reload", "exit 1") as manager:
        os.kill(manager.status()["generations"][0]["pid"], signal.SIGKILL)
        manager.wait_line(r"generation 2 ready after")
    assert not any("before-reload hook" in line for line in manager.lines)


def test_on_ready_gets_the_generation_its_pid_and_the_manager_pid(tmp_path: Path) -> None:
    hook = f"env > {shlex.quote(str(tmp_path))}/ready-$GAPLESS_GENERATION.env"
    with running(tmp_path, DEMO, "--on-ready", hook) as manager:
        manager.wait_line(r"on-ready hook .* exited 0")
        first = manager.status()["generations"][0]["pid"]
        assert manager.call("reload")["ok"]
        manager.wait_line(r"on-ready hook .* exited 0")
        second = manager.status()["generations"][-1]["pid"]
    assert _env_of(tmp_path / "ready-1.env") == {
        "GAPLESS_EVENT": "on-ready",
        "GAPLESS_GENERATION": "1",
        "GAPLESS_PID": str(first),
        "GAPLESS_MANAGER_PID": str(manager.process.pid),
    }
    assert _env_of(tmp_path / "ready-2.env")["GAPLESS_PID"] == str(second)


def test_on_reload_failed_fires_when_a_generation_fails_to_start(tmp_path: Path) -> None:
    command = tmp_path / "command.json"
    seen = tmp_path / "failed.env"
    hook = f"env > {shlex.quote(str(seen))}"
    options = ("--on-reload-failed", hook, "--on-ready", "true")
    with running(tmp_path, write_command(command, DEMO), *options) as manager:
        write_command(command, app("exit3.py"))
        answer = manager.call("reload")
        pid = manager.wait_line(r"generation 2 started as pid (\d+)").group(1)
        manager.wait_line(r"on-reload-failed hook .* exited 0")
        assert [g["state"] for g in manager.status()["generations"]] == ["active"]
    assert not answer["ok"]
    env = _env_of(seen)
    assert env["GAPLESS_EVENT"] == "on-reload-failed"
    assert env["GAPLESS_GENERATION"] == "2"
    assert env["GAPLESS_PID"] == pid
    assert env["GAPLESS_REASON"] == answer["error"]
    assert "exited with code 3 before it was ready" in env["GAPLESS_REASON"]


def test_a_hanging_hook_is_killed_with_its_group_at_the_timeout(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hook = "sleep 1000 & echo $$ $! > pids; wait"  # in the manager's directory, tmp_path
    with running(tmp_path, DEMO, "--before-reload", hook, "--hook-timeout", "1") as manager:
        answer = manager.call("reload")
        status = manager.status()
        manager.wait_line(r"reaped orphan pid \d+: killed by signal 9")  # the sleep
        manager.wait_line(r"before-reload hook .* \(pid \d+\) killed by signal 9 \(SIGKILL\)")
        shell, sleeper = (int(pid) for pid in pids.read_text().split())
        assert wait_exit(shell) and wait_exit(sleeper)
        assert not alive(shell) and not alive(sleeper)  # reaped, no zombie left
    assert answer == {
        "v": 1,
        "ok": False,
        "error": f"generation 2 not started: before-reload hook `{hook}` did not finish "
        "within 1 s; killed",
        "generation": 2,
        "stderr": [],
    }
    assert [g["state"] for g in status["generations"]] == ["active"]


def test_status_is_answered_while_a_before_reload_hook_runs(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    hook = f"read line < {shlex.quote(str(gate))}; echo got $line"
    with running(tmp_path, DEMO, "--before-reload", hook) as manager:
        reload = subprocess.Popen(
            gapless_argv("reload", "--control", manager.control),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        manager.wait_line(r"before-reload hook .* started as pid")
        status = manager.status()
        writer = os.open(gate, os.O_RDWR)  # read-write: the open never waits for the hook
        try:
            os.write(writer, b"go\n")
            out, err = reload.communicate(timeout=TIMEOUT)
        finally:
            os.close(writer)
        manager.wait_line(r"\[hook before-reload\] got go$")
    states = [(g["generation"], g["state"], g["pid"] is None) for g in status["generations"]]
    assert states == [(1, "active", False), (2, "starting", True)]
    assert reload.returncode == 0, err
    assert "reload done: generation 2 ready" in out
    assert "[hook before-reload] got go" in out  # the hook's output reaches the client


def test_a_stop_while_a_before_reload_hook_runs_kills_it_and_exits_0(tmp_path: Path) -> None:
    hook = "exec sleep 1000"
    with running(tmp_path, DEMO, "--before-reload", hook) as manager:
        reload = subprocess.Popen(
            gapless_argv("reload", "--control", manager.control),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        hook_pid = int(manager.wait_line(r"before-reload hook .* started as pid (\d+)").group(1))
        assert manager.call("stop")["ok"]
        assert manager.wait() == 0
        _, err = reload.communicate(timeout=TIMEOUT)
    assert wait_exit(hook_pid)
    assert "generation 2 was cancelled: the manager is stopping" in err
    assert any("before-reload hook killed: the manager stops" in line for line in manager.lines)


def test_hooks_survive_an_upgrade_in_place(tmp_path: Path) -> None:
    hook = "echo vetoed >&2; exit 7"
    with running(tmp_path, DEMO, "--before-reload", hook) as manager:
        assert manager.call("upgrade")["ok"]
        manager.wait_line(rf"resumed in place as pid {manager.process.pid}")
        answer = manager.call("reload")
    assert (
        answer["error"] == f"generation 2 not started: before-reload hook `{hook}` exited 7: vetoed"
    )


def test_hook_output_in_json_logs_is_one_object_per_line(tmp_path: Path) -> None:
    options = ("--log-format", "json", "--on-ready", "echo to-out; echo to-err >&2")
    with running(tmp_path, DEMO, *options, ready_line=r'"event": "ready"') as manager:
        manager.wait_line(r'"message": "on-ready hook .* exited 0')
    records = [json.loads(line) for line in manager.lines if '"hook-output"' in line]
    pid = next(json.loads(x)["pid"] for x in manager.lines if '"on-ready hook ' in x)
    # Two pipes: which one the manager reads first is not fixed.
    assert sorted((r["stream"], r["line"], r["hook"], r["pid"]) for r in records) == [
        ("stderr", "to-err", "on-ready", pid),
        ("stdout", "to-out", "on-ready", pid),
    ]
    for record in records:
        assert record["level"] == "info"
        assert record["message"] == f"[hook on-ready] {record['line']}"


def test_an_upgrade_is_refused_while_a_hook_runs(tmp_path: Path) -> None:
    with running(tmp_path, DEMO, "--on-ready", "exec sleep 1000") as manager:
        pid = manager.wait_line(r"on-ready hook `exec sleep 1000` started as pid (\d+)").group(1)
        answer = manager.call("upgrade")
        assert manager.status()["manager"]["upgrades"] == 0
        manager.signal(signal.SIGTERM)
        assert manager.wait() == 0
    assert answer["error"] == (
        f"cannot upgrade now: the on-ready hook `exec sleep 1000` runs (pid {pid}); "
        "retry in a moment"
    )
    assert wait_exit(int(pid))  # killed as the manager exits
    assert any(f"on-ready hook (pid {pid}) killed: the manager exits" in x for x in manager.lines)


def test_a_hook_that_cannot_be_started_is_one_line_and_a_failure(tmp_path: Path) -> None:
    read, write = os.pipe()
    outcomes: list[str | None] = []
    with selectors.DefaultSelector() as selector:
        run = HookRun(
            "before-reload",
            "true",
            {},
            selector,
            EventLog("text", fd=write),
            timeout=5.0,
            on_done=outcomes.append,
            shell=str(tmp_path / "no-shell"),
        )
        assert run.over and not selector.get_map()
    line = read_line(read).decode()
    nothing_more = select.select([read], [], [], 0)[0] == []
    os.close(read)
    os.close(write)
    reason = "before-reload hook `true` could not start: No such file or directory"
    assert outcomes == [reason]
    assert line.split(": ", 1)[1].rstrip("\n") == reason
    assert nothing_more


def test_an_output_event_in_the_round_the_hook_exited_in_is_ignored(tmp_path: Path) -> None:
    """Its pipe's event, returned by the same select() as its pidfd's, comes after the
    pipes were closed: it must not read a closed fd (nor another file reusing it)."""
    read, write = os.pipe()
    outcomes: list[str | None] = []
    with selectors.DefaultSelector() as selector:
        run = HookRun("on-ready", "echo hi", {}, selector, EventLog("text", fd=write), 5.0)
        run_done = HookRun(
            "before-reload", "exit 0", {}, selector, EventLog("text", fd=write), 5.0,
            outcomes.append,
        )  # fmt: skip
        assert run.pid is not None and run_done.pid is not None
        for pid in (run.pid, run_done.pid):
            pidfd = os.pidfd_open(pid)
            assert select.select([pidfd], [], [], TIMEOUT)[0], "the hook did not exit"
            os.close(pidfd)
        keys = [key for key, _ in selector.select(0)]
        keys.sort(key=lambda key: key.data not in (run.collect, run_done.collect))
        assert keys[0].data in (run.collect, run_done.collect) and len(keys) > 2
        for key in keys:
            key.data()
        assert run.over and run_done.over and not selector.get_map()
    lines = [read_line(read).decode() for _ in range(5)]
    os.close(read)
    os.close(write)
    assert outcomes == [None]
    assert any(line.endswith(": [hook on-ready] hi\n") for line in lines), lines


def test_hook_options_are_parsed_for_run_and_serve_and_an_empty_one_refused() -> None:
    parser = build_parser()
    hooks = ["--before-reload", "nginx -t", "--on-ready", "true", "--hook-timeout", "2m"]
    for argv in (["run", *hooks, "--", "server"], ["serve", "app:app", *hooks]):
        args = parser.parse_args(argv)
        assert (args.before_reload, args.on_ready, args.hook_timeout) == ("nginx -t", "true", 120)
        assert args.on_reload_failed is None
    done = subprocess.run(
        [PYTHON, "-m", "gapless", "run", "--before-reload", " ", "--", "server"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 2
    assert re.fullmatch(
        r"gapless run: error: argument --before-reload: invalid hook command ' ': give a shell "
        r"command, e.g. 'nginx -t'; see gapless run --help\n",
        done.stderr,
    )
