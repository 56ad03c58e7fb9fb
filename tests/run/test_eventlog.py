"""The event log never blocks the manager (gapless.run.eventlog): a reader that stops
leaves lines in a bounded buffer, then dropped and counted, while the loop goes on."""

from __future__ import annotations

import os
import re
import select
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from manager_harness import TIMEOUT, app, gapless_argv

from gapless.proc.outlet import Outlet
from gapless.run.control import call
from gapless.run.eventlog import BUFFER_LIMIT, EventLog
from gapless.systemd.notify_receiver import NotifyReceiver

DROPPED = re.compile(rb"dropped (\d+) log lines?: the log was not read")


@contextmanager
def unread_pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    try:
        yield read_fd, write_fd
    finally:
        os.close(read_fd)
        os.close(write_fd)


def read_until_dropped(read_fd: int, selector: selectors.BaseSelector | None = None) -> bytes:
    """Read the pipe (running ``selector``'s callbacks, as the manager's loop would)
    until the line that counts the dropped lines has come."""
    os.set_blocking(read_fd, False)
    received = b""
    deadline = time.monotonic() + TIMEOUT
    while not DROPPED.search(received):
        assert time.monotonic() < deadline, received[-300:]
        if select.select([read_fd], [], [], TIMEOUT)[0]:
            received += os.read(read_fd, 1 << 16)
        for key, _ in selector.select(0) if selector else ():
            key.data()
    return received


def test_a_reader_that_stops_blocks_no_write_and_the_dropped_lines_are_counted() -> None:
    events = 100_000
    with unread_pipe() as (read_fd, write_fd), selectors.DefaultSelector() as selector:
        log = EventLog("text", fd=write_fd)
        log.attach(selector)
        done = threading.Event()

        def flood() -> None:
            for number in range(events):
                log.event("reload", f"event {number}")
            done.set()

        threading.Thread(target=flood, daemon=True).start()
        assert done.wait(TIMEOUT), "a write blocked on the pipe nobody reads"
        assert 0 < log.dropped < events
        received = read_until_dropped(read_fd, selector)
    lines = received.splitlines()
    kept = [line for line in lines if not DROPPED.search(line)]
    # The oldest lines were kept, in order, up to the bound; the rest were counted.
    assert kept[:3] == [f"gapless[{os.getpid()}]: event {n}".encode() for n in range(3)]
    assert sum(len(line) + 1 for line in kept) <= BUFFER_LIMIT + (1 << 16)
    match = DROPPED.search(received)
    assert match is not None and int(match.group(1)) == log.dropped == events - len(kept)


def test_a_manager_whose_stderr_nobody_reads_still_answers_status(tmp_path: Path) -> None:
    control = str(tmp_path / "control.sock")
    argv = gapless_argv("run", "--control", control, "--bind", "web=127.0.0.1:0")
    command = app("chatty.py", "50000")  # 5 MB of output, forwarded as 50,000 log lines
    with unread_pipe() as (read_fd, write_fd), NotifyReceiver() as upstream:
        env = {**os.environ, "NOTIFY_SOCKET": upstream.address}
        process = subprocess.Popen(
            [*argv, "--", *command], stdout=write_fd, stderr=write_fd, env=env, cwd=tmp_path
        )
        try:
            wait_ready(upstream)
            started = time.monotonic()
            answer = call(control, "status", timeout=1.0)
            assert answer["ok"] and time.monotonic() - started < 1.0
            received = read_until_dropped(read_fd)
            assert b"[gen 1 pid " in received
            assert call(control, "stop", timeout=TIMEOUT)["ok"]
            assert process.wait(TIMEOUT) == 0
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(TIMEOUT)


def wait_ready(upstream: NotifyReceiver) -> None:
    """The manager's READY=1 to its own supervisor: generation 1 serves."""
    while select.select([upstream], [], [], TIMEOUT)[0]:
        note = upstream.receive()
        if note is not None and note.ready:
            return
    raise AssertionError(f"no READY=1 from the manager in {TIMEOUT} s")


def test_the_outlet_never_blocks_and_leaves_the_shared_fd_as_it_was() -> None:
    pipe = os.pipe()
    pty = os.openpty()  # (master, slave): nobody reads the master
    pair = socket.socketpair()
    try:
        for fd in (pipe[1], pty[1], pair[0].fileno()):
            outlet = Outlet(fd)
            assert not outlet.blocking
            written = 1
            while written:  # until the reader's side is full
                written = outlet.write(b"x" * 4096)
            assert os.get_blocking(fd), "O_NONBLOCK leaked to the shared description"
            outlet.close()
            os.fstat(fd)  # still open
    finally:
        for fd in (*pipe, *pty):
            os.close(fd)
        for sock in pair:
            sock.close()
