"""Logs people can ship (gapless.run.eventlog, gapless.run.children): a generation's
stdout relayed line by line as its stderr is, cold, warm and across an upgrade in
place; JSON lines with an ISO 8601 UTC time and a level; an exit on the stop signal
during a drain told as the end it is."""

from __future__ import annotations

import datetime
import json
import os
import signal
from pathlib import Path

from manager_harness import app, running
from serve_harness import reload, serving

from gapless.run.eventlog import EventLog

STDOUT = app("stdout_app.py")
LEVELS = ("info", "warning", "error")  # what docs/run.md promises


def test_a_generations_stdout_is_relayed_line_by_line_with_its_prefix(tmp_path: Path) -> None:
    with running(tmp_path, STDOUT) as manager:
        pid = manager.wait_line(r"^\[gen 1 pid (\d+)\] on stderr$").group(1)
        manager.wait_line(rf"^\[gen 1 pid {pid}\] first half, second half$")
        assert manager.call("stop")["ok"]
        assert manager.wait() == 0


def test_json_lines_have_ts_level_and_the_stream_of_child_output(tmp_path: Path) -> None:
    options = ("--log-format", "json")
    with running(tmp_path, STDOUT, *options, ready_line='"event": "ready"') as manager:
        assert manager.call("stop")["ok"]
        assert manager.wait() == 0
    records = [json.loads(line) for line in manager.lines]
    for record in records:
        assert record["level"] in LEVELS, record
        assert record["ts"].endswith("Z"), record
        moment = datetime.datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
        assert abs(moment.timestamp() - record["time"]) < 0.002, record
    outputs = [(r["stream"], r["line"]) for r in records if r["event"] == "output"]
    assert ("stdout", "first half, second half") in outputs, outputs
    assert ("stderr", "on stderr") in outputs, outputs
    exited = next(r for r in records if r["event"] == "exited")
    assert exited["level"] == "info", exited  # a stop, not a crash


def test_a_crash_is_a_warning_and_a_failure_an_error_in_json(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    try:
        log = EventLog("json", fd=write_fd)
        log.event("failed", "reload failed: it crashed")
        log.event("exited", "generation 2 (pid 9) exited with code 3", level="warning")
        log.event("killed", "generation 1 killed")
        log.output(2, 9, b"hello", "stdout")
        lines = os.read(read_fd, 65536).decode().splitlines()
    finally:
        os.close(read_fd)
        os.close(write_fd)
    levels = [json.loads(line)["level"] for line in lines]
    assert levels == ["error", "warning", "warning", "info"]


def test_an_exit_on_sigterm_during_the_drain_is_told_as_such(tmp_path: Path) -> None:
    with running(tmp_path, STDOUT) as manager:
        assert manager.call("reload")["ok"]
        manager.wait_line(
            r"^gapless\[\d+\]: generation 1 \(pid \d+\) exited on SIGTERM after its drain$"
        )
        assert not any("killed by signal 15" in line for line in manager.lines)


def test_stdout_is_still_relayed_after_an_upgrade_in_place(tmp_path: Path) -> None:
    with running(tmp_path, STDOUT) as manager:
        pid = manager.wait_line(r"^\[gen 1 pid (\d+)\] first half, second half$").group(1)
        assert manager.call("upgrade")["ok"]
        manager.wait_line(rf"resumed in place as pid {manager.process.pid}")
        manager.signal(signal.SIGUSR1)
        manager.wait_line(rf"^\[gen 1 pid {pid}\] stdout got SIGUSR1$")
        assert manager.call("stop")["ok"]
        assert manager.wait() == 0


def test_a_warm_generations_stdout_is_relayed_as_a_cold_ones(tmp_path: Path) -> None:
    with serving(tmp_path, "serve_stdout_app:app") as manager:
        manager.wait_line(r"^\[gen 1 pid (\d+)\] imported on stdout in pid \1$")
        manager.wait_line(r"fork server ready")
        reload(manager)
        pid = manager.wait_line(r"generation 2 started as pid (\d+) \(forked warm\)").group(1)
        manager.wait_line(rf"^\[gen 2 pid {pid}\] imported on stdout in pid {pid}$")


def test_the_watchdogs_json_lines_have_ts_and_level_too(tmp_path: Path) -> None:
    options = ("--log-format", "json")
    with running(tmp_path, STDOUT, *options, ready_line='"event": "ready"') as manager:
        manager.process.kill()  # the watchdog ends generation 1, and says so
        manager.process.wait()
        manager.read_to_end()
    records = [json.loads(line) for line in manager.lines]
    said = [r for r in records if r["event"] == "watchdog"]
    assert said and all(r["level"] == "warning" and r["ts"].endswith("Z") for r in said), said
