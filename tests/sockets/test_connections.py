"""The connections a generation holds, counted from /proc with real sockets."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from manager_harness import TIMEOUT, app, running

from gapless.sockets.connections import ConnectionCounter, held_socket_inodes


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def _listen(stack: ExitStack, family: socket.AddressFamily, address: object) -> socket.socket:
    sock = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
    sock.bind(address)
    sock.listen()
    return sock


def _connect(stack: ExitStack, listener: socket.socket) -> socket.socket:
    """A client connected to ``listener`` and the server's end of it."""
    client = stack.enter_context(socket.socket(listener.family, socket.SOCK_STREAM))
    client.connect(listener.getsockname())
    return stack.enter_context(listener.accept()[0])


def test_accepted_tcp_and_unix_connections_count_and_nothing_else(
    stack: ExitStack, tmp_path: Path
) -> None:
    tcp = _listen(stack, socket.AF_INET, ("127.0.0.1", 0))
    tcp6 = _listen(stack, socket.AF_INET6, ("::1", 0))
    unix = _listen(stack, socket.AF_UNIX, str(tmp_path / "s.sock"))
    abstract = _listen(stack, socket.AF_UNIX, b"\0gapless-test-" + str(os.getpid()).encode())
    counter = ConnectionCounter.of([tcp, tcp6, unix, abstract])
    me = [os.getpid()]
    assert counter.count(me) == 0  # listeners, and no connection yet
    for listener in (tcp, tcp6, unix, abstract, tcp):
        _connect(stack, listener)
    # Not counted: the clients' ends (another port, no address), a socketpair, a
    # connection accepted on a socket that is no listener of ours.
    stack.enter_context(socket.socketpair()[0])
    _connect(stack, _listen(stack, socket.AF_INET, ("127.0.0.1", 0)))
    assert counter.count(me) == 5


def test_a_closed_connection_no_longer_counts(stack: ExitStack) -> None:
    listener = _listen(stack, socket.AF_INET, ("127.0.0.1", 0))
    counter = ConnectionCounter.of([listener])
    served = _connect(stack, listener)
    assert counter.count([os.getpid()]) == 1
    served.close()
    assert counter.count([os.getpid()]) == 0


def test_processes_that_are_gone_or_none_hold_nothing() -> None:
    assert held_socket_inodes([2**22 + 1]) == frozenset()
    assert ConnectionCounter(frozenset({80}), frozenset()).count([]) == 0


def test_held_inodes_are_those_of_the_fds(stack: ExitStack) -> None:
    left, right = socket.socketpair()
    for sock in (left, right):
        stack.enter_context(sock)
    inodes = held_socket_inodes([os.getpid()])
    assert {os.fstat(left.fileno()).st_ino, os.fstat(right.fileno()).st_ino} <= inodes


def test_accept_readiness_sees_a_server_that_never_waits_visibly_once_it_holds_a_connection(
    tmp_path: Path,
) -> None:
    ready = r"generation 1 ready after \d+ ms \(accept\)"
    with running(tmp_path, app("sigio_accept.py"), "--ready", "accept", ready_line=None) as manager:
        manager.wait_line(r"generation 1 started as pid")
        with socket.create_connection(("127.0.0.1", manager.port), timeout=TIMEOUT):
            manager.wait_line(ready)
