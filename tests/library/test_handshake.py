"""GAPLESS_STDERR_FD, the predecessor's stderr that a successor takes over once
ready: only an fd that can be a stderr is taken, and it is not inherited further."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gapless.library.handshake import STDERR_VAR, UPSTREAM_VAR, Handshake


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    os.set_inheritable(write, True)  # as a predecessor passes it
    yield read, write
    os.close(read)
    os.close(write)


def take(value: str, upstream: str | None = "") -> tuple[Handshake, dict[str, str]]:
    environ = {STDERR_VAR: value}
    if upstream is not None:
        environ[UPSTREAM_VAR] = upstream
    return Handshake.take(environ), environ


def test_a_pipe_is_taken_and_made_close_on_exec(
    pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    handshake, environ = take(str(pipe[1]))
    assert handshake.stderr_fd == pipe[1]
    assert not os.get_inheritable(pipe[1]), "the server's own children must not inherit it"
    assert environ == {}
    assert caplog.records == []


def test_a_file_or_a_connected_socket_is_taken(tmp_path: Path) -> None:
    """``app 2>log`` and journald's stream socket are stderrs too."""
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT)
    left, right = socket.socketpair()
    try:
        assert take(str(fd))[0].stderr_fd == fd
        assert take(str(left.fileno()))[0].stderr_fd == left.fileno()
    finally:
        os.close(fd)
        left.close()
        right.close()


def refused(value: str, caplog: pytest.LogCaptureFixture, upstream: str | None = "") -> str:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gapless"):
        handshake, environ = take(value, upstream)
    assert handshake.stderr_fd is None
    assert STDERR_VAR not in environ
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message and STDERR_VAR in message and repr(value) in message
    return message


@pytest.mark.parametrize("value", ["0", "1", "2", "-4", "x", "", "99999999999999999999"])
def test_not_a_descriptor_above_2_is_ignored_with_one_warning(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert "above 2" in refused(value, caplog)


def test_a_closed_fd_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    read, write = os.pipe()
    os.close(read)
    os.close(write)
    assert "not an open" in refused(str(write), caplog)


def test_a_read_end_is_ignored(pipe: tuple[int, int], caplog: pytest.LogCaptureFixture) -> None:
    assert "not open for writing" in refused(str(pipe[0]), caplog)


def test_a_directory_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        refused(str(fd), caplog)
    finally:
        os.close(fd)


def test_a_listening_socket_is_ignored_and_left_open(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert "listening socket" in refused(str(listener.fileno()), caplog)
        os.fstat(listener.fileno())  # still open: it is the server's, not ours to close


def test_without_a_gapless_predecessor_it_is_ignored(
    pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    assert UPSTREAM_VAR in refused(str(pipe[1]), caplog, upstream=None)
