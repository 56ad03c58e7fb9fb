"""Library mode under races and faults (issue 10): close() and stop() in the middle
of an upgrade, hooks that block, a PID file that cannot be removed, successors
with workers. Real processes; every wait is on an event with a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from harness import APPS, Supervised, start, wait_exit

from gapless import UpgradeError, Upgrader, UpgradeRefusedError
from gapless.library.stopping import Stopping
from gapless.library.successor import Cancel

pytestmark = [
    pytest.mark.timeout(60),
    # A thread of the upgrader that dies (EBADF on a pipe closed under it) fails the test.
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
]

TIMEOUT = 20.0


class Reports:
    """The datagrams ``tests/apps/lib_app.py`` sends: ``"<what> <pid>"``, in any
    order across processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(TIMEOUT)
        self.early: list[tuple[str, int]] = []

    def next(self, what: str) -> int:
        """The pid of the first report of ``what`` not yet taken."""
        for item in self.early:
            if item[0] == what:
                self.early.remove(item)
                return item[1]
        while True:
            got, pid = self.sock.recv(200).decode().split()
            if got == what:
                return int(pid)
            self.early.append((got, int(pid)))


@pytest.fixture
def reports(tmp_path: Path) -> Iterator[Reports]:
    received = Reports(tmp_path / "reports.sock")
    yield received
    received.sock.close()


def app_argv(tmp_path: Path, reports: Reports, **config: object) -> list[str]:
    """The argv of ``tests/apps/lib_app.py`` with this config (rewritten at each call)."""
    path = tmp_path / "app.json"
    path.write_text(json.dumps({"report": str(reports.path), **config}))
    return [sys.executable, str(APPS / "lib_app.py"), str(path)]


def environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}


def upgrade_in_background(upgrader: Upgrader) -> Future[int]:
    outcome: Future[int] = Future()

    def run() -> None:
        try:
            outcome.set_result(upgrader.upgrade())
        except BaseException as exc:
            outcome.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return outcome


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    return False


# Case 3: close() while a successor starts --------------------------------------


def test_close_during_an_upgrade_kills_the_successor_and_releases_everything(
    tmp_path: Path, reports: Reports
) -> None:
    pid_file = tmp_path / "app.pid"
    up = Upgrader(environ=environ(), ready_timeout=TIMEOUT, drain_timeout=-1, pid_file=pid_file)
    sock = up.listen("web=127.0.0.1:0")
    port = sock.getsockname()[1]
    up.ready()
    assert pid_file.read_text() == f"{os.getpid()}\n"
    up.command = app_argv(tmp_path, reports, hang=True)
    outcome = upgrade_in_background(up)
    successor = reports.next("start")
    try:
        up.close()
        assert sock.fileno() == -1, "the listener is closed"
        assert not pid_file.exists(), "the PID file is removed"
        assert wait_exit(successor, TIMEOUT), "the successor is killed"
        with pytest.raises(UpgradeError, match="cancelled"):
            outcome.result(TIMEOUT)
        assert refused(port), "nothing holds the socket any more"
        up.close()  # a second close does nothing
    finally:
        kill(successor)
        reap(successor)


def test_close_while_a_before_upgrade_hook_runs_starts_no_successor(
    tmp_path: Path, reports: Reports
) -> None:
    up = Upgrader(environ=environ(), ready_timeout=TIMEOUT, drain_timeout=-1)
    up.listen("web=127.0.0.1:0")
    up.ready()
    up.command = app_argv(tmp_path, reports, hang=True)
    in_hook, release = threading.Event(), threading.Event()

    def hook() -> None:
        in_hook.set()
        release.wait(TIMEOUT)

    up.hooks.before_upgrade.append(hook)
    outcome = upgrade_in_background(up)
    assert in_hook.wait(TIMEOUT)
    up.close()
    release.set()
    with pytest.raises(UpgradeError, match="cancelled before the successor started"):
        outcome.result(TIMEOUT)


# Case 4: stop() as an upgrade completes -----------------------------------------


class StopAsTheCancelPipeCloses(Cancel):
    """The upgrade's cancel pipe, acting the moment the upgrade closes it: with
    ``reuse``, files of the test take the freed fd numbers (as any thread opening
    a file would), then ``stop()`` is called, as a TERM arriving then does."""

    def __init__(self, upgrader: Upgrader, tmp_path: Path, reuse: bool) -> None:
        super().__init__()
        self.upgrader, self.tmp_path, self.reuse = upgrader, tmp_path, reuse
        self.files: list[Path] = []
        self.stop_error: BaseException | None = None
        self.acted = False

    def close(self) -> None:
        if self.acted:  # closing is idempotent; one stop() is what a TERM does
            super().close()
            return
        self.acted = True
        freed = {self.fileno(), self._write}
        super().close()
        held = take_fds(freed, self.tmp_path) if self.reuse else []
        self.files += [path for _, path in held]
        try:
            self.upgrader.stop()
        except BaseException as exc:
            self.stop_error = exc
        finally:
            for fd, _ in held:
                os.close(fd)


def take_fds(numbers: set[int], directory: Path) -> list[tuple[int, Path]]:
    """Open files until they hold every fd number in ``numbers``, as any thread
    opening a file would; return those (fd, path), closing the others."""
    held, others = [], []
    for i in range(64):
        path = directory / f"someone-else-{i}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC)
        if fd in numbers:
            held.append((fd, path))
            numbers.discard(fd)
        else:
            others.append(fd)
        if not numbers:
            break
    for fd in others:
        os.close(fd)
    assert not numbers, "the freed fds were not reused"
    return held


@pytest.mark.parametrize("reuse", [False, True], ids=["closed-fd", "reused-fd"])
def test_stop_as_the_upgrade_completes_writes_to_no_fd_and_stops(
    tmp_path: Path, reports: Reports, reuse: bool
) -> None:
    up = Upgrader(environ=environ(), ready_timeout=TIMEOUT, drain_timeout=-1)
    up.listen("web=127.0.0.1:0")
    up.ready()
    up.command = app_argv(tmp_path, reports)
    cancel = StopAsTheCancelPipeCloses(up, tmp_path, reuse)
    up._new_cancel = lambda: cancel
    successor = None
    try:
        with pytest.raises(UpgradeRefusedError, match="stopping"):
            up.upgrade(TIMEOUT)
        successor = reports.next("start")
        assert cancel.stop_error is None, f"stop() raised {cancel.stop_error!r}"
        assert up.stopping
        assert all(path.read_bytes() == b"" for path in cancel.files), "another file was written"
        assert len(cancel.files) == (2 if reuse else 0)
        assert wait_exit(successor, TIMEOUT), "the successor raced the stop: it is killed"
    finally:
        up.close()
        if successor is not None:
            kill(successor)
            reap(successor)


# The hammer: nothing stops it, and it takes the workers with it ---------------


def socket_holders(inode: int) -> set[int]:
    """Every process with an fd on the socket of this inode."""
    holders = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        holders.add(int(pid))
    return holders


def test_the_hammer_kills_a_successors_workers_too(tmp_path: Path, reports: Reports) -> None:
    """Issue 10: a successor's worker, forked with the listening socket, outlived
    its server's hammer and kept the socket (and its accept queue) for ever."""
    up = Upgrader(environ=environ(), ready_timeout=TIMEOUT, drain_timeout=-1)
    sock = up.listen("web=127.0.0.1:0")
    inode = os.fstat(sock.fileno()).st_ino
    up.ready()
    up.command = app_argv(tmp_path, reports, worker=True, drain_forever=True)
    pids: list[int] = []
    try:
        second = up.upgrade(TIMEOUT)
        pids += [second, reports.next("worker")]
        assert reports.next("ready") == second
        up.close()  # this process is done: the second one and its worker hold the socket
        assert socket_holders(inode) == set(pids)
        app_argv(tmp_path, reports)  # the third version has no worker and drains at once
        os.kill(second, signal.SIGUSR2)
        third = reports.next("ready")
        pids.append(third)
        assert wait_exit(second, TIMEOUT), "the hammer ends the second version (1 s)"
        assert wait_exit(pids[1], TIMEOUT), "and its worker with it"
        assert socket_holders(inode) == {third}
    finally:
        up.close()
        for pid in pids:
            kill(pid)
        reap(second)


def start_app(tmp_path: Path, reports: Reports, **config: object) -> Supervised:
    server = start(app_argv(tmp_path, reports, **config))
    assert reports.next("ready") == server.main_pid
    return server


@pytest.mark.parametrize("hook", ["before_shutdown", "before_upgrade", "after_upgrade"])
def test_a_hook_blocked_for_ever_does_not_stop_the_hammer(
    tmp_path: Path, reports: Reports, hook: str
) -> None:
    server = start_app(tmp_path, reports, block=hook, drain_forever=True)
    pid = server.main_pid
    try:
        if hook == "before_shutdown":
            os.kill(pid, signal.SIGTERM)
        elif hook == "before_upgrade":
            os.kill(pid, signal.SIGUSR2)
            assert reports.next(f"blocked-{hook}") == pid
            os.kill(pid, signal.SIGTERM)
        else:  # after_upgrade runs once the successor is ready, under the upgrader's lock
            server.upgrade()
        if hook != "before_upgrade":
            assert reports.next(f"blocked-{hook}") == pid
        assert wait_exit(pid, TIMEOUT), "the drain deadline (1 s) ends the process"
    finally:
        server.stop()


@pytest.mark.parametrize("second_term", [False, True], ids=["hammer", "second-term"])
def test_a_pid_file_that_cannot_be_removed_does_not_stop_the_exit(
    tmp_path: Path, reports: Reports, second_term: bool
) -> None:
    pid_file = tmp_path / "app.pid"
    server = start_app(tmp_path, reports, pid_file=str(pid_file), drain_forever=True)
    pid = server.main_pid
    try:
        assert pid_file.read_text() == f"{pid}\n"
        pid_file.unlink()
        pid_file.mkdir()  # reading it now fails: remove_pid_file raises PidFileError
        os.kill(pid, signal.SIGTERM)
        if second_term:
            os.kill(pid, signal.SIGTERM)
        assert wait_exit(pid, TIMEOUT)
    finally:
        server.stop()


# Cancel, on its own ----------------------------------------------------------------


def test_cancel_set_after_close_writes_nothing_and_close_is_idempotent(tmp_path: Path) -> None:
    cancel = Cancel()
    pipe = {cancel.fileno(), cancel._write}
    cancel.close()
    held = take_fds(pipe, tmp_path)
    try:
        cancel.set()
        cancel.close()
        assert cancel.is_set()
        assert [path.read_bytes() for _, path in held] == [b"", b""]
    finally:
        for fd, _ in held:
            os.close(fd)


def wait_inside(thread: threading.Thread, code: object) -> None:
    """Until ``thread`` runs (or waits) inside the function whose code is ``code``."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(thread.ident or 0)
        while frame is not None:
            if frame.f_code is code:
                return
            frame = frame.f_back
    raise AssertionError(f"thread {thread.name} never got inside {code}")


def test_cancel_guard_refuses_once_set_and_set_waits_for_the_guarded_block() -> None:
    cancel = Cancel()
    inside, leave = threading.Event(), threading.Event()
    order: list[str] = []

    def guarded() -> None:
        with cancel.unless_set():
            inside.set()
            leave.wait(TIMEOUT)
            order.append("spawned")

    def cancel_it() -> None:
        cancel.set()
        order.append("set returned")

    worker = threading.Thread(target=guarded)
    worker.start()
    assert inside.wait(TIMEOUT)
    setter = threading.Thread(target=cancel_it)
    setter.start()
    wait_inside(setter, Cancel.set.__code__)  # it stays there while the block runs
    leave.set()
    worker.join(TIMEOUT)
    setter.join(TIMEOUT)
    assert order == ["spawned", "set returned"], "set() returned during the spawn"
    assert cancel.entered
    refused = pytest.raises(UpgradeError, match="cancelled before the successor started")
    with refused, cancel.unless_set():
        pass
    cancel.close()


# Stopping: the handover waits for asyncio servers to stop accepting --------------


def test_stopping_is_acknowledged_once_the_awaiting_task_took_its_next_step() -> None:
    stopping = Stopping()
    steps: list[str] = []
    loop = asyncio.new_event_loop()

    async def server() -> None:
        await stopping.wait_async()
        steps.append("stopped accepting")  # as server.close() right after the await

    task = loop.create_task(server())
    loop_thread = threading.Thread(target=loop.run_until_complete, args=(task,))
    loop_thread.start()
    # Once this no-op ran on the loop, the server's first step (registering) is done.
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(TIMEOUT)
    stopping.set()
    assert stopping.wait_acknowledged(TIMEOUT)
    assert steps == ["stopped accepting"]
    loop_thread.join(TIMEOUT)
    loop.close()


def test_stopping_skips_a_closed_loop() -> None:
    stopping = Stopping()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(_register(stopping))
    loop.close()
    stopping.set()  # no RuntimeError from the closed loop
    assert stopping.wait_acknowledged(0)


async def _register(stopping: Stopping) -> None:
    task = asyncio.ensure_future(stopping.wait_async())
    await asyncio.sleep(0)
    task.cancel()
