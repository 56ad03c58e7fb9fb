"""systemd's fd store (gapless.systemd.fdstore): the test plays systemd with a NotifyReceiver
that keeps the fds, then restarts the manager as ``systemctl restart`` does: stop,
then start with the stored sockets as LISTEN_FDS. No connection is refused."""

from __future__ import annotations

import os
import select
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from lines import Lines
from manager_harness import DEMO, TIMEOUT, Prober, gapless_argv, running
from restart_harness import kill_everything_named

from gapless.proc.spawn import Child, spawn
from gapless.systemd.fdstore import fd_store_size, given_back_names, store_listeners
from gapless.systemd.notify_receiver import Notification, NotifyReceiver

pytestmark = pytest.mark.timeout(60)


def receive(receiver: NotifyReceiver, accept: Callable[[Notification], bool]) -> Notification:
    """The next datagram ``accept`` takes; the fds of the others are closed."""
    while select.select([receiver], [], [], TIMEOUT)[0]:
        note = receiver.receive()
        if note is None:
            continue
        if accept(note):
            return note
        for fd in note.fds:
            os.close(fd)
    raise AssertionError(f"no expected datagram in {TIMEOUT} s")


def same_socket(fd: int, sock: socket.socket) -> bool:
    left, right = os.fstat(fd), os.fstat(sock.fileno())
    return (left.st_dev, left.st_ino) == (right.st_dev, right.st_ino)


def test_the_store_is_used_only_when_systemd_offers_one() -> None:
    assert fd_store_size({"FDSTORE": "16", "NOTIFY_SOCKET": "/run/notify"}) == 16
    assert fd_store_size({"FDSTORE": "16"}) == 0  # nobody to send to
    assert fd_store_size({"NOTIFY_SOCKET": "/run/notify"}) == 0  # no store configured
    assert fd_store_size({"FDSTORE": "lots", "NOTIFY_SOCKET": "/run/notify"}) == 0
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:stored"}
    assert given_back_names(env, 42) == ["web", "stored"]
    assert given_back_names(env, 43) == []


def test_stored_sockets_carry_their_names_after_the_given_back_ones_are_dropped() -> None:
    with NotifyReceiver(keep_fds=True) as systemd:
        web, other = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
        store_listeners([("web", web), (None, other)], systemd.address, given_back=["web", "old"])
        dropped = [receive(systemd, lambda note: True) for _ in range(2)]
        assert [dict(note.fields) for note in dropped] == [
            {"FDSTOREREMOVE": "1", "FDNAME": "web"},
            {"FDSTOREREMOVE": "1", "FDNAME": "old"},
        ]
        stored = [receive(systemd, lambda note: True) for _ in range(2)]
        assert [note.fields["FDNAME"] for note in stored] == ["web", "stored"]
        assert all(note.fields["FDSTORE"] == "1" and len(note.fds) == 1 for note in stored)
        assert same_socket(stored[0].fds[0], web) and same_socket(stored[1].fds[0], other)
        for note in stored:
            os.close(note.fds[0])
        web.close()
        other.close()


def test_systemctl_restart_keeps_the_sockets_and_refuses_nothing(tmp_path: Path) -> None:
    with NotifyReceiver(keep_fds=True) as systemd:
        env = {**os.environ, "NOTIFY_SOCKET": systemd.address, "FDSTORE": "8"}
        with running(tmp_path, DEMO, env=env) as manager:
            note = receive(systemd, lambda note: note.fields.get("FDSTORE") == "1")
            assert note.fields["FDNAME"] == "web" and len(note.fds) == 1
            stored = socket.socket(fileno=note.fds[0])  # what systemd keeps
            manager.wait_line(r"kept 1 listening socket\(s\) in systemd's fd store")
            port = manager.port
            old = int(manager.wait_line(r"generation 1 started as pid (\d+)").group(1))
            with Prober(port) as prober:
                manager.signal(signal.SIGTERM)  # systemctl restart: the stop...
                assert manager.wait() == 0
                receive(systemd, lambda note: note.stopping)
                child, restarted = start_with_stored(stored, env, manager.control)  # ...the start
                try:
                    restarted.wait_line(rf"listening on 127\.0\.0\.1:{port} as web")
                    started = restarted.wait_line(r"generation 1 started as pid (\d+)")
                    restarted.wait_line("generation 1 ready after")
                    prober.wait_answer_from(int(started.group(1)))
                    assert old in prober.pids
                    again = receive(systemd, lambda note: "FDSTOREREMOVE" in note.fields)
                    assert again.fields["FDNAME"] == "web"
                    prober.wait_answers(prober.answered + 5)
                    prober.finish()
                    child.send_signal(signal.SIGTERM)
                    assert child.wait(TIMEOUT) is not None
                finally:
                    prober.finish()
                    kill_everything_named(restarted)
                    child.close()
            assert prober.failures == []
            stored.close()


def start_with_stored(
    stored: socket.socket, env: dict[str, str], control: str
) -> tuple[Child, Lines]:
    """Start the manager as systemd does after a restart: the stored socket on fd 3,
    LISTEN_FDS=1, LISTEN_FDNAMES=web and LISTEN_PID its own pid."""
    argv = gapless_argv("run", "--control", control)
    child = spawn(
        [*argv, "--bind", "web=127.0.0.1:0", "--", *DEMO],
        listeners=[stored],
        names=["web"],
        env=env,
        capture_stderr=True,
    )
    assert child.stderr_fd is not None
    os.set_blocking(child.stderr_fd, True)
    lines = Lines(os.fdopen(child.stderr_fd, "r"))
    child.stderr_fd = None  # the reader owns it now
    return child, lines
