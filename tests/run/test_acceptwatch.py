"""gapless.run.acceptwatch with real processes: each way of waiting, trees, vanished pids."""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gapless.proc.spawn import Child, spawn
from gapless.run.acceptwatch import accepting, socket_inode

TIMEOUT = 10.0
APPS = Path(__file__).parents[1] / "apps"
VENV_BIN = Path(sys.executable).parent

# The child gets the listener on fd 3, says "waiting" on REPORT_FD, blocks until the test
# writes to GO_FD, then serves with the mode named by argv[1]. Its asyncio loop (an epoll
# fd) exists before "go", so the negative check also covers an epoll that does not watch
# the socket.
PRELUDE = """
import asyncio, os, select, selectors, socket, socketserver, sys
listener = socket.socket(fileno=3)
loop = asyncio.new_event_loop()

def say(text):
    os.write(int(os.environ["REPORT_FD"]), text.encode() + b"\\n")

def wait_go():
    os.read(int(os.environ["GO_FD"]), 1)

def serve(sock, how):
    if how == "accept":
        while True:
            sock.accept()[0].close()
    if how == "asyncio":
        loop.run_until_complete(loop.create_server(asyncio.Protocol, sock=sock))
        loop.run_forever()
    if how == "selector":
        selector = selectors.DefaultSelector()
        assert isinstance(selector, selectors.EpollSelector)
        selector.register(sock, selectors.EVENT_READ)
        while True:
            selector.select()
    if how == "poll":
        poller = select.poll()
        poller.register(os.pipe()[0], select.POLLIN)
        poller.register(sock, select.POLLIN)
        while True:
            poller.poll()
    if how == "select":
        while True:
            select.select([os.pipe()[0], sock], [], [])
    if how == "socketserver":
        server = socketserver.TCPServer(None, socketserver.BaseRequestHandler, False)
        server.socket = sock
        server.serve_forever()
"""

SERVE_LISTENER = PRELUDE + "say('waiting'); wait_go(); serve(listener, sys.argv[1])"

SERVE_OTHER = (
    PRELUDE
    + """
other = socket.create_server(("127.0.0.1", 0))
say(str(os.fstat(other.fileno()).st_ino))
serve(other, sys.argv[1])
"""
)

SERVE_IN_GRANDCHILD = (
    PRELUDE
    + """
pid = os.fork()
if pid == 0:
    say(str(os.getpid()))
    serve(listener, "accept")
os.waitpid(pid, 0)
"""
)

# An epoll entry outlives its fd number while a dup keeps the file open; after dup2 the
# number names the listener, but the entry still watches the other socket.
STALE_EPOLL_ENTRY = (
    PRELUDE
    + """
other = socket.create_server(("127.0.0.1", 0))
keep = other.dup()
epoll = select.epoll()
epoll.register(other.fileno(), select.EPOLLIN)
os.dup2(listener.fileno(), other.fileno())
say("ready")
epoll.poll()
"""
)

MODES = ["accept", "asyncio", "selector", "poll", "select", "socketserver"]


class Started:
    """A spawned child with its report pipe (read end) and go pipe (write end)."""

    def __init__(self, child: Child, report: int, go: int) -> None:
        self.child = child
        self.report = report
        self.go = go

    def line(self) -> str:
        """Return the next line the child says, failing the test after TIMEOUT."""
        data = b""
        deadline = time.monotonic() + TIMEOUT
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.report], [], [], remaining)[0]:
                pytest.fail(f"child {self.child.pid} said nothing in {TIMEOUT}s: {data!r}")
            chunk = os.read(self.report, 1)
            if not chunk:
                pytest.fail(f"child {self.child.pid} closed its report pipe: {data!r}")
            data += chunk
        return data.decode().strip()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0), backlog=socket.SOMAXCONN)
    yield sock
    sock.close()


@pytest.fixture
def start(listener: socket.socket) -> Iterator[Callable[..., Started]]:
    """Start ``argv`` (or a Python child running ``code``) with the listener on fd 3."""
    started: list[Started] = []

    def run(code: str = "", *args: str, argv: list[str] | None = None) -> Started:
        go_r, go_w = os.pipe()
        report_r, report_w = os.pipe()
        try:
            child = spawn(
                argv or [sys.executable, "-c", code, *args],
                listeners=[listener],
                extra_fds={"GO_FD": go_r, "REPORT_FD": report_w},
                new_process_group=True,
                cwd=str(APPS),
            )
        finally:
            os.close(go_r)
            os.close(report_w)
        started.append(Started(child, report_r, go_w))
        return started[-1]

    yield run
    for each in started:
        each.child.kill_group(signal.SIGKILL)
        assert each.child.wait(TIMEOUT) is not None, f"child {each.child.pid} did not die"
        each.child.close()
        os.close(each.report)
        os.close(each.go)


def wait_until_accepting(pid: int, inodes: set[int]) -> None:
    """Poll accepting() until True; fail after TIMEOUT.

    This retry loop is the event: what is observed (a thread entering accept, an epoll
    registration) signals nothing, and the child's "about to serve" line is written
    before the call starts, so one check right after it could race the child.
    """
    deadline = time.monotonic() + TIMEOUT
    while not accepting(pid, inodes):
        if time.monotonic() > deadline:
            pytest.fail(f"no process under {pid} accepted on {inodes} within {TIMEOUT}s")
        select.select([], [], [], 0.005)


@pytest.mark.parametrize("mode", MODES)
def test_accepting_once_the_child_serves(
    start: Callable[..., Started], listener: socket.socket, mode: str
) -> None:
    inode = socket_inode(listener)
    child = start(SERVE_LISTENER, mode)
    assert child.line() == "waiting"
    # Blocked reading GO_FD, holding the listener and an unrelated epoll: not accepting.
    assert not accepting(child.child.pid, {inode})
    os.write(child.go, b"x")
    wait_until_accepting(child.child.pid, {inode})


@pytest.mark.parametrize("mode", MODES)
def test_serving_another_socket_is_not_accepting(
    start: Callable[..., Started], listener: socket.socket, mode: str
) -> None:
    child = start(SERVE_OTHER, mode)
    other = int(child.line())
    wait_until_accepting(child.child.pid, {other})
    assert not accepting(child.child.pid, {socket_inode(listener)})
    assert accepting(child.child.pid, {socket_inode(listener), other})


def test_a_grandchild_accepting_counts_for_the_root(
    start: Callable[..., Started], listener: socket.socket
) -> None:
    inode = socket_inode(listener)
    child = start(SERVE_IN_GRANDCHILD)
    grandchild = int(child.line())
    wait_until_accepting(child.child.pid, {inode})
    assert accepting(grandchild, {inode})


@pytest.mark.parametrize("worker", ["sync", "gthread"])
def test_gunicorn_worker(
    start: Callable[..., Started], listener: socket.socket, worker: str
) -> None:
    argv = [str(VENV_BIN / "gunicorn"), "-w", "1", "-k", worker, "acceptwatch_wsgi:app"]
    child = start(argv=argv)
    wait_until_accepting(child.child.pid, {socket_inode(listener)})


@pytest.mark.parametrize(
    "argv",
    [
        ["uvicorn", "--fd", "3", "acceptwatch_asgi:app"],
        ["hypercorn", "--bind", "fd://3", "acceptwatch_asgi:app"],
    ],
    ids=["uvicorn", "hypercorn"],
)
def test_asgi_server(
    start: Callable[..., Started], listener: socket.socket, argv: list[str]
) -> None:
    child = start(argv=[str(VENV_BIN / argv[0]), *argv[1:]])
    wait_until_accepting(child.child.pid, {socket_inode(listener)})


def test_a_process_outside_the_tree_does_not_count(
    start: Callable[..., Started], listener: socket.socket
) -> None:
    inode = socket_inode(listener)
    serving, idle = start(SERVE_LISTENER, "accept"), start(SERVE_LISTENER, "accept")
    assert serving.line() == idle.line() == "waiting"
    os.write(serving.go, b"x")
    wait_until_accepting(serving.child.pid, {inode})
    assert not accepting(idle.child.pid, {inode})


def test_an_epoll_entry_for_another_file_under_the_same_fd_does_not_count(
    start: Callable[..., Started], listener: socket.socket
) -> None:
    child = start(STALE_EPOLL_ENTRY)
    assert child.line() == "ready"
    assert not accepting(child.child.pid, {socket_inode(listener)})


def test_a_vanished_process_is_not_accepting(listener: socket.socket) -> None:
    child = spawn([sys.executable, "-c", "pass"], listeners=[listener])
    # Exited but not reaped: a zombie has no fds and no tasks to read.
    assert select.select([child.pidfd], [], [], TIMEOUT)[0], "child did not exit"
    assert not accepting(child.pid, {socket_inode(listener)})
    assert child.wait(TIMEOUT) is not None
    child.close()
    assert not accepting(child.pid, {socket_inode(listener)})


def test_no_inodes_is_not_accepting(start: Callable[..., Started]) -> None:
    child = start(SERVE_LISTENER, "accept")
    assert child.line() == "waiting"
    os.write(child.go, b"x")
    assert not accepting(child.child.pid, set())
