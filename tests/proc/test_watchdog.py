"""A SIGKILLed ``gapless run`` leaves nothing serving: the watchdog (gapless.proc.watchdog).

Each test runs a prefork server whose leader dies of SIGTERM without stopping its
worker, kills the manager outright, waits for the worker to exit, then looks in
every process's fd table for the listening socket.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path

import pytest
from harness import wait_exit
from manager_harness import PYTHON, TIMEOUT, Manager, app, running

from gapless.proc.spawn import spawn
from gapless.proc.watchdog import Watchdog

SERVER = app("forking_server.py")


def socket_inode(pid: int, fd: int) -> str:
    link = os.readlink(f"/proc/{pid}/fd/{fd}")
    assert link.startswith("socket:["), link
    return link


def holders(link: str) -> list[int]:
    """The processes that hold the socket ``link`` (``socket:[inode]``) open."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == link for fd in fds):
                found.append(int(pid))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def worker_of(manager: Manager) -> int:
    return int(manager.wait_line(r"\] worker pid (\d+)").group(1))


def watchdog_of(manager: Manager, generations: set[int]) -> int:
    """The manager's child that is no generation's leader."""
    pid = manager.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    others = [int(child) for child in children if int(child) not in generations]
    assert len(others) == 1, (children, generations)
    return others[0]


def assert_refused(port: int) -> None:
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 5):
        pass


def kill_and_check(manager: Manager, worker: int, timeout: float = TIMEOUT) -> None:
    """SIGKILL the manager; the worker must exit and nothing hold the socket after."""
    link = socket_inode(worker, 3)
    port = manager.port
    manager.process.kill()
    manager.process.wait(TIMEOUT)
    assert wait_exit(worker, timeout), f"worker {worker} outlived its manager"
    assert holders(link) == []
    assert_refused(port)


def test_eof_ends_the_watched_groups_and_spares_the_forgotten_ones() -> None:
    pause = [PYTHON, "-c", "import signal\nwhile True: signal.pause()"]
    watched, forgotten = (spawn(pause, new_process_group=True) for _ in range(2))
    try:
        watchdog = Watchdog.start(signal.SIGTERM, grace=TIMEOUT)
        watchdog.watch(watched.pid)
        watchdog.watch(forgotten.pid)
        watchdog.forget(forgotten.pid)
        watchdog.close()  # EOF, as if this process had died
        status = watched.wait(TIMEOUT)
        assert status is not None and status.returncode == -signal.SIGTERM
        assert forgotten.poll() is None
    finally:
        for child in (watched, forgotten):
            child.kill_group(signal.SIGKILL)
            child.wait(TIMEOUT)
            child.close()


def test_a_sigkilled_manager_leaves_no_worker_holding_the_socket(tmp_path: Path) -> None:
    with running(tmp_path, SERVER) as manager:
        worker = worker_of(manager)
        kill_and_check(manager, worker)
        manager.read_to_end()
    assert any(
        re.search(r"the manager \(pid \d+\) died; sent SIGTERM to generation groups", line)
        for line in manager.lines
    ), manager.log()


def test_a_worker_that_ignores_the_stop_signal_is_killed_after_the_drain_timeout(
    tmp_path: Path,
) -> None:
    command = [*SERVER, "--worker-ignores-term"]
    with running(tmp_path, command, "--drain-timeout", "1") as manager:
        worker = worker_of(manager)
        kill_and_check(manager, worker)
        manager.read_to_end()
    assert any("SIGKILL in 1 s to what is left" in line for line in manager.lines), manager.log()


def test_the_watchdog_survives_an_upgrade_in_place_and_acts_after_it(tmp_path: Path) -> None:
    with running(tmp_path, SERVER) as manager:
        worker = worker_of(manager)
        leader = manager.status()["generations"][0]["pid"]
        watchdog = watchdog_of(manager, {leader})
        assert manager.call("upgrade")["ok"]
        manager.wait_line(rf"resumed in place as pid {manager.process.pid}")
        # The exec kept the pipe open: the watchdog did not fire, the worker serves.
        assert manager.status()["generations"][0]["pid"] == leader
        assert watchdog_of(manager, {leader}) == watchdog
        kill_and_check(manager, worker)


def test_a_stopped_manager_leaves_no_watchdog_and_kills_nothing_more(tmp_path: Path) -> None:
    with running(tmp_path, SERVER, "--drain-timeout", "1") as manager:
        leader = manager.status()["generations"][0]["pid"]
        watchdog = watchdog_of(manager, {leader})
        assert manager.call("stop")["ok"]
        assert manager.wait() == 0
        assert wait_exit(watchdog), "the watchdog outlived a manager that stopped"
    assert not any("died; sent" in line for line in manager.lines), manager.log()


def test_a_killed_watchdog_is_replaced_and_the_new_one_acts(tmp_path: Path) -> None:
    with running(tmp_path, SERVER) as manager:
        worker = worker_of(manager)
        leader = manager.status()["generations"][0]["pid"]
        os.kill(watchdog_of(manager, {leader}), signal.SIGKILL)
        manager.wait_line(r"the watchdog \(pid \d+\) .*; started another as pid \d+")
        kill_and_check(manager, worker)
