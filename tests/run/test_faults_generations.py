"""Faults of the generations under ``gapless run``, each with a prober running.

The new generation fails at import, exits right after READY=1, crashes in its
first second of serving, never gets ready, or leaves workers behind; the old one
ignores its stop signal, exits in the middle of its drain, or is stopped with
SIGSTOP. Wherever a generation serves, no request may fail. The app is
tests/apps/fault_server.py; docs/reliability.md lists what each test shows.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from harness import alive, wait_exit
from manager_harness import TIMEOUT, Manager, Prober, app, running, write_command

from gapless.proc.spawn import ExitStatus
from gapless.run.generations import (
    CRASH_LIMIT,
    CRASH_WINDOW,
    Boot,
    ChildExited,
    ChildReady,
    Exit,
    Generations,
    Phase,
    ReportReload,
    Spawn,
)

NOTIFY = ("--ready", "notify")


def fault(*args: str) -> list[str]:
    return app("fault_server.py", *args)


def pid_of(manager: Manager, generation: int) -> int:
    return int(manager.wait_line(rf"generation {generation} started as pid (\d+)").group(1))


# The new generation -----------------------------------------------------------


def test_a_new_generation_failing_at_import_changes_nothing_for_clients(tmp_path: Path) -> None:
    command = tmp_path / "command.json"
    with (
        running(tmp_path, write_command(command, fault()), *NOTIFY) as manager,
        Prober(manager.port) as prober,
    ):
        write_command(command, fault("--import-error"))
        answer = manager.call("reload")
        prober.wait_answers(prober.answered + 3)
        status = manager.status()
    assert not answer["ok"]
    assert "generation 2 exited with code 1 before it was ready" in answer["error"]
    assert answer["stderr"][-1] == "ModuleNotFoundError: No module named 'gapless_no_such_module'"
    assert [(g["generation"], g["state"]) for g in status["generations"]] == [(1, "active")]
    assert prober.failures == []


def test_a_new_generation_exiting_right_after_ready_is_replaced_at_once(tmp_path: Path) -> None:
    command = tmp_path / "command.json"
    with (
        running(tmp_path, write_command(command, fault()), *NOTIFY) as manager,
        Prober(manager.port) as prober,
    ):
        write_command(command, fault("--exit-after-ready", "0", "--once", str(tmp_path / "m")))
        assert manager.call("reload")["ok"]  # it was ready, and the old one was told to drain
        manager.wait_line(r"generation 2 \(pid \d+\) exited with code 0")
        replacement = pid_of(manager, 3)
        manager.wait_line(r"generation 3 ready after")
        prober.wait_answer_from(replacement)
        status = manager.status()
    # Meanwhile nobody accepted, but the manager kept the socket: clients waited in
    # its backlog and the replacement answered them.
    assert prober.failures == []
    assert [(g["generation"], g["state"]) for g in status["generations"]] == [(3, "active")]


def test_a_new_generation_crashing_in_its_first_second_of_serving_is_replaced(
    tmp_path: Path,
) -> None:
    command = tmp_path / "command.json"
    with (
        running(tmp_path, write_command(command, fault()), *NOTIFY) as manager,
        Prober(manager.port) as prober,
    ):
        write_command(command, fault("--crash-after", "0.5", "--once", str(tmp_path / "m")))
        assert manager.call("reload")["ok"]
        prober.wait_answer_from(pid_of(manager, 2))
        manager.wait_line(r"generation 2 \(pid \d+\) exited with code 1")
        prober.wait_answer_from(pid_of(manager, 3))
    assert prober.failures == []


def test_a_generation_that_keeps_crashing_after_ready_ends_the_manager_with_exit_1(
    tmp_path: Path,
) -> None:
    command = tmp_path / "command.json"
    with running(tmp_path, write_command(command, fault()), *NOTIFY) as manager:
        write_command(command, fault("--exit-after-ready", "0"))
        manager.call("reload")
        assert manager.wait() == 1
    last = 2 + CRASH_LIMIT
    started = [line for line in manager.lines if "started as pid" in line]
    assert len(started) == last  # generation 1, 2 and CRASH_LIMIT replacements
    assert any(
        f"generation {last} exited with code 0 while active: {CRASH_LIMIT + 1} crashes "
        f"within {CRASH_WINDOW:g} s; giving up" in line
        for line in manager.lines
    )


def test_the_crash_limit_counts_crashes_within_the_window_only() -> None:
    m = Generations(ready_timeout=60, drain_timeout=30, stop_signal=15)
    m.handle(Boot(), 0.0)
    numbers = iter(range(1, 1000))

    def crash(now: float) -> list[object]:
        number = next(numbers)
        m.handle(ChildReady(number), now)
        return list(m.handle(ChildExited(number, ExitStatus(1)), now))

    spaced = CRASH_WINDOW / CRASH_LIMIT  # never more than CRASH_LIMIT in a window
    for i in range(3 * CRASH_LIMIT):
        assert isinstance(crash(i * spaced)[-1], Spawn)
    later = 1000.0
    for _ in range(CRASH_LIMIT):
        assert isinstance(crash(later)[-1], Spawn)
    given_up = crash(later)
    assert isinstance(given_up[0], ReportReload) and not given_up[0].result.ok
    assert given_up[-1] == Exit(1) and m.phase is Phase.STOPPED


def test_a_new_generation_that_never_gets_ready_is_killed_and_clients_see_nothing(
    tmp_path: Path,
) -> None:
    command = tmp_path / "command.json"
    options = (*NOTIFY, "--ready-timeout", "2")
    with (
        running(tmp_path, write_command(command, fault()), *options) as manager,
        Prober(manager.port) as prober,
    ):
        write_command(command, fault("--never-ready"))
        answer = manager.call("reload")
        prober.wait_answers(prober.answered + 3)
    assert "generation 2 was not ready within 2 s; killed" in answer["error"]
    assert prober.failures == []


def test_workers_of_a_new_generation_that_never_gets_ready_die_with_its_group(
    tmp_path: Path,
) -> None:
    command, worker_file = tmp_path / "command.json", tmp_path / "worker.pid"
    options = (*NOTIFY, "--ready-timeout", "2")
    with (
        running(tmp_path, write_command(command, fault()), *options) as manager,
        Prober(manager.port) as prober,
    ):
        write_command(command, fault("--never-ready", "--fork-worker", str(worker_file)))
        assert not manager.call("reload")["ok"]
        assert wait_exit(int(worker_file.read_text()))
        manager.wait_line(r"generation 2 killed \(SIGKILL to group \d+\): not ready within")
    assert prober.failures == []


def test_workers_left_by_a_new_generation_that_exits_before_ready_are_killed_at_once(
    tmp_path: Path,
) -> None:
    command, worker_file = tmp_path / "command.json", tmp_path / "worker.pid"
    with (
        running(tmp_path, write_command(command, fault()), *NOTIFY) as manager,
        Prober(manager.port) as prober,
    ):
        write_command(command, fault("--fork-worker", str(worker_file), "--import-error"))
        assert not manager.call("reload")["ok"]
        manager.wait_line(r"generation 2 killed \(SIGKILL to group \d+\): its leader exited")
        assert wait_exit(int(worker_file.read_text()))
        prober.wait_answers(prober.answered + 3)
    assert prober.failures == []


# The old generation -------------------------------------------------------------


def record(manager: Manager, pattern: str) -> dict[str, Any]:
    """The next JSON log record whose line matches ``pattern``."""
    found: dict[str, Any] = json.loads(manager.wait_line(pattern).string)
    return found


def reload_then_drain_deadline(manager: Manager) -> tuple[int, float]:
    """Reload; once generation 1 has stopped accepting, return its pid and the wall
    clock time of its drain deadline, as the manager's log states them."""
    assert manager.call("reload")["ok"]
    draining = record(manager, r'"event": "draining".*"generation": 1\b')
    seconds = re.search(r"killed in (\S+) s if still running", draining["message"])
    assert seconds is not None, draining
    stopped = record(manager, r'"line": "stopped accepting"')
    assert stopped["generation"] == 1
    return stopped["pid"], draining["time"] + float(seconds.group(1))


def assert_killed_at(manager: Manager, pid: int, deadline: float) -> None:
    """Killed within 0.15 s of the deadline, as seen here and by the manager."""
    assert wait_exit(pid, deadline - time.time() + TIMEOUT)
    seen = time.time() - deadline
    killed = record(manager, r'"event": "killed".*"generation": 1\b')["time"] - deadline
    assert -0.15 <= seen <= 0.15, f"died {seen:+.3f} s from the deadline"
    assert -0.15 <= killed <= 0.15, f"killed {killed:+.3f} s from the deadline"


# The manager's JSON log has the time of each event, to check the deadline by.
TIMED = (*NOTIFY, "--drain-timeout", "1.5", "--log-format", "json")
JSON_READY = r'"event": "ready"'


def test_an_old_generation_that_ignores_sigterm_is_killed_at_the_deadline(
    tmp_path: Path,
) -> None:
    with (
        running(tmp_path, fault("--on-term", "hang"), *TIMED, ready_line=JSON_READY) as manager,
        Prober(manager.port) as prober,
    ):
        old, deadline = reload_then_drain_deadline(manager)
        assert_killed_at(manager, old, deadline)
        record(manager, rf"generation 1 \(pid {old}\) killed by signal 9")
    assert prober.failures == []


def test_an_old_generation_stopped_with_sigstop_is_still_killed_at_the_deadline(
    tmp_path: Path,
) -> None:
    with (
        running(tmp_path, fault("--on-term", "hang"), *TIMED, ready_line=JSON_READY) as manager,
        Prober(manager.port) as prober,
    ):
        old, deadline = reload_then_drain_deadline(manager)
        os.kill(old, signal.SIGSTOP)
        assert_killed_at(manager, old, deadline)
        record(manager, rf"generation 1 \(pid {old}\) killed by signal 9")
    assert prober.failures == []


def test_an_old_generation_exiting_in_the_middle_of_its_drain_is_simply_gone(
    tmp_path: Path,
) -> None:
    options = (*NOTIFY, "--drain-timeout", "30")
    with (
        running(tmp_path, fault("--on-term", "exit-later:0.2"), *options) as manager,
        Prober(manager.port) as prober,
    ):
        old = manager.status()["generations"][0]["pid"]
        assert manager.call("reload")["ok"]
        manager.wait_line(rf"generation 1 \(pid {old}\) exited with code 1")
        status = manager.status()
        prober.wait_answers(prober.answered + 3)
    assert not alive(old)
    assert [(g["generation"], g["state"]) for g in status["generations"]] == [(2, "active")]
    assert not any("generation 1 killed" in line for line in manager.lines)
    assert prober.failures == []
