"""The manager's failure is never the service's (invariant 7), with real processes.

A control client that stops reading is dropped alone and the next client is
answered; every field of every command is checked and a bad one is answered
with one error line; the upgrade target is checked beside the loop, so
``status`` is answered while a slow target is tried; an exception in a handler
drops only that client (or datagram); an exception in the loop itself
re-executes the manager in place, keeping its pid, its sockets and its
generations. The faults are injected with the test-only ``fault`` command that
exists only when the manager runs with ``GAPLESS_TEST_FAULTS=1``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from manager_harness import DEMO, TIMEOUT, Manager, Prober, app, running, write_command
from test_fuzz_notify import notify_address, stable

FAULTS = {**os.environ, "GAPLESS_TEST_FAULTS": "1"}
NOTIFY = ("--ready", "notify")


def connect(path: str) -> socket.socket:
    """A client connected to ``path``: a blocking connect waits while the backlog is
    full (a non-blocking one fails at once), up to TIMEOUT (SO_SNDTIMEO)."""
    sock = socket.socket(socket.AF_UNIX)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(TIMEOUT), 0))
    sock.connect(path)
    sock.settimeout(TIMEOUT)
    return sock


def send_request(path: str, cmd: str, **fields: Any) -> socket.socket:
    """A client that sent one request and reads nothing (yet)."""
    sock = connect(path)
    sock.sendall(json.dumps({"v": 1, "cmd": cmd, **fields}).encode() + b"\n")
    return sock


def answers(sock: socket.socket) -> list[dict[str, Any]]:
    """Every line up to EOF."""
    with sock.makefile("rb") as lines:
        return [json.loads(line) for line in lines]


def final_answer(sock: socket.socket) -> dict[str, Any]:
    """The first line that is not progress."""
    with sock.makefile("rb") as lines:
        for line in lines:
            message: dict[str, Any] = json.loads(line)
            if "progress" not in message:
                return message
    raise AssertionError("EOF before the final answer")


def generation_pids(manager: Manager) -> list[int]:
    return [g["pid"] for g in manager.status()["generations"]]


# Case 1: a client that stops reading ---------------------------------------------


def test_a_client_that_stops_reading_is_dropped_alone_and_the_next_one_is_answered(
    tmp_path: Path,
) -> None:
    command = tmp_path / "command.json"
    options = (*NOTIFY, "--ready-timeout", "120")
    with (
        running(tmp_path, write_command(command, DEMO), *options) as manager,
        Prober(manager.port) as prober,
    ):
        before = generation_pids(manager)
        write_command(command, app("never_ready.py"))
        with send_request(manager.control, "reload") as stuck:  # waits, never reads
            manager.wait_line(r"generation 2 started")
            # Each HUP is a progress line to the waiting client: far more than its
            # socket buffer holds (about 280 lines here).
            for _ in range(600):
                manager.signal(signal.SIGHUP)
                manager.wait_line(r"reload requested by SIGHUP")
            status = manager.status()  # an fd number the dropped client had
            seen = answers(stuck)
        prober.wait_answers(prober.answered + 3)
        assert manager.process.poll() is None
        assert generation_pids(manager)[0] == before[0]
    assert [g["state"] for g in status["generations"]] == ["active", "starting"]
    assert seen and all("progress" in line for line in seen)  # dropped, not answered
    assert prober.failures == []


# Case 2: every field of every command --------------------------------------------

COMMANDS = ["help", "status", "reload", "stop", "upgrade"]
WRONG = [None, True, False, 0, 2, 1.5, "1", [], [1], {}, {"v": 1}]


def test_every_wrong_type_of_every_field_is_one_error_line_and_changes_nothing(
    tmp_path: Path,
) -> None:
    with running(tmp_path, DEMO) as manager, Prober(manager.port) as prober:
        before = stable(manager.status())
        requests: list[dict[str, Any]] = []
        for cmd in COMMANDS:
            requests += [{"v": wrong, "cmd": cmd} for wrong in WRONG if wrong != 1]
        requests += [{"v": 1, "cmd": wrong} for wrong in WRONG]
        requests += [{"v": 1, "cmd": "upgrade", "python": wrong} for wrong in WRONG]
        for request in requests:
            with connect(manager.control) as sock:
                sock.sendall(json.dumps(request).encode() + b"\n")
                sock.shutdown(socket.SHUT_WR)
                (answer,) = answers(sock)
            assert answer["ok"] is False, (request, answer)
            assert "\n" not in answer["error"] and answer["error"], (request, answer)
        after = stable(manager.status())
        prober.wait_answers(prober.answered + 3)
    assert after == before
    assert prober.failures == []


@pytest.mark.parametrize(
    ("python", "error"),
    [
        ("a\0b", "\"python\" 'a\\x00b' contains a NUL byte; pass the interpreter's absolute path"),
        (
            "\ud800",
            "\"python\" '\\ud800' is not a valid path; pass the interpreter's absolute path",
        ),
        ("bin/python", "cannot upgrade with 'bin/python': not an absolute path; pass the full"),
        ("/nonexistent/python", "cannot upgrade with '/nonexistent/python': no such file;"),
        ("/", "cannot upgrade with '/': not a regular file; pass the interpreter's path"),
        ("{tmp}/plain", "cannot upgrade with '{tmp}/plain': not executable; pass"),
    ],
)
def test_a_bad_upgrade_target_is_one_error_line_naming_it(
    tmp_path: Path, python: str, error: str
) -> None:
    (tmp_path / "plain").write_text("#!/bin/sh\n")  # 0644: root may not run it either
    python, error = (text.replace("{tmp}", str(tmp_path)) for text in (python, error))
    with running(tmp_path, DEMO) as manager:
        before = stable(manager.status())
        answer = manager.call("upgrade", python=python)
        after = stable(manager.status())
    assert answer["ok"] is False
    assert answer["error"].startswith(error), answer
    assert after == before


SLOW_TARGET = """#!{python}
import socket
with socket.socket(socket.AF_UNIX) as gate:
    gate.connect({gate!r})
    gate.recv(1)  # blocks until the test lets it answer
print(999)
"""


def test_status_is_answered_while_a_slow_upgrade_target_is_checked(tmp_path: Path) -> None:
    target = tmp_path / "python"
    gate_path = str(tmp_path / "gate.sock")
    target.write_text(SLOW_TARGET.format(python=sys.executable, gate=gate_path))
    target.chmod(0o755)
    with (
        socket.socket(socket.AF_UNIX) as gate,
        running(tmp_path, DEMO) as manager,
        Prober(manager.port) as prober,
    ):
        gate.bind(gate_path)
        gate.listen()
        gate.settimeout(TIMEOUT)
        before = stable(manager.status())
        with send_request(manager.control, "upgrade", python=str(target)) as upgrading:
            checking, _ = gate.accept()  # the target runs and blocks
            with checking:
                status = manager.status()  # answered meanwhile
                checking.send(b"x")
                refused = final_answer(upgrading)
        after = stable(manager.status())
        prober.wait_answers(prober.answered + 3)
    assert stable(status) == before == after
    assert refused["ok"] is False
    assert refused["error"].startswith(f"cannot upgrade with {str(target)!r}: its gapless cannot")
    assert "(999)" in refused["error"]
    assert prober.failures == []


# Invariant 7 ------------------------------------------------------------------------


def test_invariant_7_an_exception_in_a_handler_drops_only_that_client(tmp_path: Path) -> None:
    with running(tmp_path, DEMO, env=FAULTS) as manager, Prober(manager.port) as prober:
        before = generation_pids(manager)
        with connect(manager.control) as bystander:  # connected before, asks after
            with send_request(manager.control, "fault", where="handler") as faulty:
                lines = answers(faulty)  # one error line, then EOF: dropped
            manager.wait_line(r"bug: an unexpected InjectedFault in the control request")
            manager.wait_line(r"raise InjectedFault\(")  # the traceback
            bystander.sendall(b'{"v": 1, "cmd": "status"}\n')
            status = final_answer(bystander)
        prober.wait_answers(prober.answered + 3)
        assert manager.status()["manager"]["recoveries"] == 0
        assert manager.process.poll() is None
    assert len(lines) == 1 and lines[0]["ok"] is False
    assert lines[0]["error"].startswith("internal error in 'fault': InjectedFault")
    assert status["ok"] and [g["pid"] for g in status["generations"]] == before
    assert prober.failures == []


def test_invariant_7_an_exception_in_the_loop_re_executes_the_manager_keeping_pid_and_generations(
    tmp_path: Path,
) -> None:
    with running(tmp_path, DEMO, env=FAULTS) as manager, Prober(manager.port) as prober:
        before = manager.status()
        armed = manager.call("fault", where="loop")
        # Asked during the exec: the control socket is kept, so it is answered after.
        during = manager.status()
        manager.wait_line(r"bug: an unexpected InjectedFault in the manager's loop")
        manager.wait_line(rf"re-executing pid {manager.process.pid} in place to recover")
        manager.wait_line(rf"resumed in place as pid {manager.process.pid}")
        prober.wait_answers(prober.answered + 3)
        assert manager.call("reload")["ok"]  # the adopted generation drains as usual
        manager.wait_line(r"generation 1 \(pid \d+\) exited with code 0")
        prober.finish()
        assert manager.call("stop")["ok"]  # only an explicit stop ends generations
        assert manager.wait() == 0
    assert armed["ok"]
    assert during["manager"]["pid"] == before["manager"]["pid"] == manager.process.pid
    assert during["manager"]["recoveries"] == 1
    assert during["generations"][0]["pid"] == before["generations"][0]["pid"]
    assert during["listeners"] == before["listeners"]
    assert prober.failures == []


def test_invariant_7_a_loop_exception_during_a_reload_keeps_the_starting_generation(
    tmp_path: Path,
) -> None:
    command = tmp_path / "command.json"
    second = app("ready_on_usr1.py", *app("fault_server.py"))
    with (
        running(tmp_path, write_command(command, DEMO), *NOTIFY, env=FAULTS) as manager,
        Prober(manager.port) as prober,
    ):
        write_command(command, second)
        manager.signal(signal.SIGHUP)
        starting = int(manager.wait_line(r"generation 2 started as pid (\d+)").group(1))
        manager.wait_line(r"\[gen 2 pid \d+\] waiting for SIGUSR1")
        assert manager.call("fault", where="loop")["ok"]
        manager.wait_line(r"resumed in place")
        states = [(g["generation"], g["state"]) for g in manager.status()["generations"]]
        os.kill(starting, signal.SIGUSR1)  # its READY=1 reaches the new process
        manager.wait_line(r"generation 2 ready after")
        prober.wait_answer_from(starting)
    assert states == [(1, "active"), (2, "starting")]
    assert prober.failures == []


def test_invariant_7_an_exception_in_a_notify_handler_drops_only_that_datagram(
    tmp_path: Path,
) -> None:
    with running(tmp_path, DEMO, env=FAULTS) as manager, Prober(manager.port) as prober:
        before = manager.status()
        assert manager.call("fault", where="notify")["ok"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"STATUS=x", notify_address(before["generations"][0]["pid"]))
        manager.wait_line(r"bug: an unexpected InjectedFault in a notify datagram")
        after = manager.status()
        prober.wait_answers(prober.answered + 3)
    assert after["manager"]["pid"] == before["manager"]["pid"]
    assert after["manager"]["recoveries"] == 0
    assert after["generations"][0]["pid"] == before["generations"][0]["pid"]
    assert prober.failures == []


def test_without_the_test_variable_there_is_no_fault_command(tmp_path: Path) -> None:
    with running(tmp_path, DEMO) as manager:
        answer = manager.call("fault", where="loop")
        assert manager.process.poll() is None
    assert answer["error"].startswith("unknown command 'fault'")


def test_invariant_7_a_bug_that_keeps_coming_back_is_survived_without_an_exec_loop(
    tmp_path: Path,
) -> None:
    with running(tmp_path, DEMO, env=FAULTS) as manager, Prober(manager.port) as prober:
        before = generation_pids(manager)
        for count in range(1, 6):
            assert manager.call("fault", where="loop")["ok"]
            manager.wait_line(rf"in place to recover \(recovery {count}\)")
            manager.wait_line(r"resumed in place")
        assert manager.call("fault", where="loop")["ok"]
        manager.wait_line(r"cannot re-execute to recover: 5 recoveries in 60 s already; serving on")
        status = manager.status()
        prober.wait_answers(prober.answered + 3)
    assert status["manager"]["recoveries"] == 5
    assert [g["pid"] for g in status["generations"]] == before
    assert prober.failures == []


def test_invariant_7_a_loop_exception_during_a_stop_carries_the_stop_through(
    tmp_path: Path,
) -> None:
    options = ("--drain-timeout", "2")
    with running(tmp_path, app("ignore_term.py"), *options, env=FAULTS) as manager:
        manager.signal(signal.SIGTERM)
        manager.wait_line(r"generation 1 draining")
        assert manager.call("fault", where="loop")["ok"]
        manager.wait_line(r"resumed in place")
        manager.wait_line(r"generation 1 killed \(SIGKILL to group \d+\): still running 2 s")
        code = manager.wait()
    assert code == 0  # a stop, not "no generation left" (exit 1)
