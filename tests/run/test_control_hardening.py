"""Hostile neighbours of a live manager: idle and excess control clients, notify
floods from strangers, and a notify socket only its owner can reach.

The control clients' timeout and cap are tested on :class:`Clients` in a loop of
its own with a short timeout (the manager's is 10 s), and the cap on a live
manager with 1,000 idle clients.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from manager_harness import DEMO, TIMEOUT, Manager, Prober, app, running, write_command
from test_control_plane import answers, connect, send_request
from test_fuzz_notify import notify_address

from gapless.run.clients import Clients
from gapless.run.control import CommandTable, ControlConnection, ControlServer, progress, reply
from gapless.run.eventlog import EventLog

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"


# Control clients: timeout and cap, on Clients itself ------------------------------


class Loop:
    """Clients served by a selector loop in a thread, as the manager does."""

    def __init__(self, path: str, *, limit: int, idle_timeout: float) -> None:
        self.server = ControlServer(path)
        table = CommandTable()
        table.register("wait", "never answer", self._wait)
        table.register("echo", "answer at once", lambda c, r: c.send(reply(True)))
        self._null = os.open(os.devnull, os.O_WRONLY)
        self._selector = selectors.DefaultSelector()
        log = EventLog(fd=self._null)
        self.clients = Clients(self._selector, log, table, limit=limit, idle_timeout=idle_timeout)
        self._wake_read, self._wake_write = socket.socketpair()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @staticmethod
    def _wait(connection: ControlConnection, request: dict[str, Any]) -> None:
        connection.waiting += 1
        connection.send(progress("waiting"))  # so that the test knows it was read

    def _loop(self) -> None:
        selector = self._selector
        selector.register(
            self.server, selectors.EVENT_READ, lambda: self.clients.accept(self.server)
        )
        selector.register(self._wake_read, selectors.EVENT_READ, None)
        while True:
            wake_at = self.clients.wake_at()
            timeout = None if wake_at is None else max(0.0, wake_at - time.monotonic())
            for key, _ in selector.select(timeout):
                if key.data is None:
                    return
                key.data()
            self.clients.tick(time.monotonic())

    def close(self) -> None:
        self._wake_write.send(b"x")
        self._thread.join(TIMEOUT)
        self.clients.close()
        self.server.close()
        self._selector.close()
        for sock in (self._wake_read, self._wake_write):
            sock.close()
        os.close(self._null)


@pytest.fixture
def loop(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Loop]:
    limit, idle_timeout = request.param
    served = Loop(str(tmp_path / "c.sock"), limit=limit, idle_timeout=idle_timeout)
    yield served
    served.close()


def request(sock: socket.socket, cmd: str) -> None:
    sock.sendall(json.dumps({"v": 1, "cmd": cmd}).encode() + b"\n")


def open_without_eof(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return bool(sock.recv(1)) or False
    except BlockingIOError:
        return True


@pytest.mark.parametrize("loop", [(128, 0.3)], indirect=True)
def test_a_client_that_sends_no_complete_request_in_time_is_dropped(loop: Loop) -> None:
    path = loop.server.path
    with connect(path) as waiting, connect(path) as idle, connect(path) as trickling:
        request(waiting, "wait")  # waiting for its answer: not idle
        answers_one(waiting)
        trickling.sendall(b'{"v": 1, "cmd"')  # never a whole line
        idle_lines = answers(idle)  # EOF: the timeout passed
        trickling_lines = answers(trickling)
        assert open_without_eof(waiting)
    message = "no complete request within 0.3 s; send one JSON object a line"
    assert idle_lines == [{"v": 1, "ok": False, "error": message}]
    assert trickling_lines == idle_lines


@pytest.mark.parametrize("loop", [(3, 60.0)], indirect=True)
def test_over_the_cap_the_oldest_idle_client_makes_room(loop: Loop) -> None:
    path = loop.server.path
    with connect(path) as first, connect(path) as second, connect(path) as idle:
        for sock in (first, second):
            request(sock, "wait")
            answers_one(sock)
        request(idle, "echo")
        assert answers_one(idle)["ok"]  # answered: idle again from now on
        with connect(path) as fourth:
            request(fourth, "echo")
            assert answers_one(fourth)["ok"]
            evicted = answers(idle)
            assert open_without_eof(first) and open_without_eof(second)
    assert evicted == [
        {
            "v": 1,
            "ok": False,
            "error": "too many control connections (3): closing this idle one; reconnect",
        }
    ]


@pytest.mark.parametrize("loop", [(2, 60.0)], indirect=True)
def test_over_the_cap_with_every_client_waiting_the_new_one_is_refused(loop: Loop) -> None:
    path = loop.server.path
    with connect(path) as first, connect(path) as second:
        for sock in (first, second):
            request(sock, "wait")
            answers_one(sock)
        with connect(path) as third:
            refused = answers(third)
        assert open_without_eof(first) and open_without_eof(second)
    error = "too many control connections (2), all waiting for an answer; retry later"
    assert refused == [{"v": 1, "ok": False, "error": error}]


def answers_one(sock: socket.socket) -> dict[str, Any]:
    sock.settimeout(TIMEOUT)
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, f"EOF after {line!r}"
        line += chunk
    message: dict[str, Any] = json.loads(line)
    return message


def test_1000_idle_clients_hold_at_most_the_cap_and_status_is_answered(tmp_path: Path) -> None:
    with running(tmp_path, DEMO) as manager, Prober(manager.port) as prober:
        idle = [connect(manager.control) for _ in range(1000)]
        try:
            status = manager.status()
            held = len(os.listdir(f"/proc/{manager.process.pid}/fd"))
            evicted = answers(idle[0])
        finally:
            for sock in idle:
                sock.close()
        assert manager.status()["ok"]
        prober.wait_answers(prober.answered + 3)
    assert status["ok"]
    assert held < 128 + 40, held
    assert evicted[0]["error"].startswith("too many control connections (128)")
    assert prober.failures == []


# Notify: a private socket, strangers rate-limited and never relayed ----------------


def test_the_notify_socket_is_a_path_in_a_private_directory(tmp_path: Path) -> None:
    with running(tmp_path, DEMO) as manager:
        pid = manager.status()["generations"][0]["pid"]
        address = notify_address(pid).decode()
        directory = os.stat(os.path.dirname(address))
        assert manager.call("stop")["ok"]
        manager.wait()
    assert address.startswith("/")
    assert stat.S_IMODE(directory.st_mode) == 0o700 and directory.st_uid == os.getuid()
    assert not os.path.exists(address)  # removed at the stop


def test_a_notify_socket_left_by_a_killed_manager_is_removed_by_the_next(tmp_path: Path) -> None:
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    with running(tmp_path / "first", DEMO) as first:
        address = notify_address(first.status()["generations"][0]["pid"]).decode()
        first.process.kill()
        first.wait()
    left = os.path.exists(address)
    with running(tmp_path / "second", DEMO):
        removed = not os.path.exists(address)
    assert left and removed


SEND = """
import socket, sys
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
    try:
        s.sendto(b"READY=1", sys.argv[1].encode())
    except OSError as e:
        print(e.strerror)
    else:
        print("sent")
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to send as another uid")
def test_a_process_of_another_uid_cannot_reach_the_notify_socket(tmp_path: Path) -> None:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"needs {SYSTEM_PYTHON} to run as another user")
    with running(tmp_path, DEMO) as manager:
        address = notify_address(manager.status()["generations"][0]["pid"]).decode()
        result = subprocess.run(
            [SYSTEM_PYTHON, "-c", SEND, address],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
        )
    assert result.stdout.strip() == "Permission denied", result


def ignored_so_far(manager: Manager, pid: int, wanted: int) -> int:
    """Wait for the log to account for ``wanted`` dropped datagrams; return its lines."""
    counted = lines = 0
    while counted < wanted:
        match = manager.wait_line(
            rf"ignored a notify datagram from pid {pid}: not a process|"
            r"ignored (\d+) more notify datagrams? in the last"
        )
        counted += int(match.group(1)) if match.group(1) else 1
        lines += 1
    assert counted == wanted
    return lines


def test_datagrams_from_strangers_are_logged_once_a_second_and_never_relayed(
    tmp_path: Path,
) -> None:
    command = tmp_path / "command.json"
    with running(tmp_path, write_command(command, DEMO), "--ready", "notify") as manager:
        address = notify_address(manager.status()["generations"][0]["pid"])
        write_command(command, app("never_ready.py"))
        with send_request(manager.control, "reload") as waiting:
            manager.wait_line(r"generation 2 started")
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                for _ in range(500):
                    sender.sendto(b"READY=1", address)
            lines = ignored_so_far(manager, os.getpid(), 500)
            manager.signal(signal.SIGHUP)  # a progress line after every datagram
            relayed = until_progress(waiting, r"reload requested by SIGHUP")
        states = [g["state"] for g in manager.status()["generations"]]
    assert lines <= 5, lines
    assert not [line for line in relayed if "notify" in line], relayed
    assert states == ["active", "starting"]


def until_progress(sock: socket.socket, pattern: str) -> list[str]:
    """The progress lines up to the first that matches ``pattern``."""
    seen = []
    with sock.makefile("rb") as lines:
        for line in lines:
            progress = str(json.loads(line).get("progress"))
            seen.append(progress)
            if re.search(pattern, progress):
                return seen
    raise AssertionError(f"EOF before {pattern!r}: {seen}")
