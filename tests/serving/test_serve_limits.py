"""Slow and hostile clients against every server of ``gapless serve``: a request
head that does not arrive whole within ``--read-timeout`` is cut (408 once some
of it arrived), a head larger than ``--max-header-size`` is refused (431 or
400), and neither limit touches an idle keep-alive connection or an honest
request. Generations are started by hand, as in test_serve_uvicorn.py."""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import time

import pytest
from prober import probe
from serve_harness import Handover, runner_argv

READ_TIMEOUT = 1.0
#: How long a test waits for the server to cut: the timeout plus a margin for a
#: loaded machine, well below the keep-alive time the tests set (30 s).
CUT_WITHIN = READ_TIMEOUT + 3.0
TRICKLE = 0.2  # seconds between two bytes of a slowloris head

STACKS = {
    "uvicorn-httptools": runner_argv("serve_app:app", "--http", "httptools"),
    "uvicorn-h11": runner_argv("serve_app:app", "--http", "h11"),
    "hypercorn": runner_argv("serve_app:app", "--server", "hypercorn"),
    "aiohttp": runner_argv("serve_aiohttp_app:app"),
    "wsgi": runner_argv("serve_wsgi_app:app"),
}
stacks = pytest.mark.parametrize("stack", list(STACKS))
LIMITS = ("--read-timeout", str(READ_TIMEOUT), "--keep-alive", "30")


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=CUT_WITHIN)


def _until_closed(sock: socket.socket, started: float, trickle: bytes = b"") -> bytes:
    """Read until the server closes, sending ``trickle`` one byte every TRICKLE
    seconds meanwhile; fail if it is still open CUT_WITHIN after ``started``."""
    received = b""
    sent = 0
    while True:
        remaining = started + CUT_WITHIN - time.monotonic()
        assert remaining > 0, f"still open after {CUT_WITHIN} s; received {received[:80]!r}"
        if select.select([sock], [], [], min(TRICKLE, remaining))[0]:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not data:
                return received
            received += data
        elif sent < len(trickle):
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.send(trickle[sent : sent + 1])  # if closed, the read above sees it next
            sent += 1


@stacks
def test_a_slowloris_head_is_cut_with_408_at_the_read_timeout(stack: str) -> None:
    with Handover([*STACKS[stack], *LIMITS]) as handover:
        handover.start()
        sock = _connect(handover.port)
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n")
        received = _until_closed(sock, started, trickle=b"X-Slow: 1\r\n" * 100)
        elapsed = time.monotonic() - started
        sock.close()
        assert received.startswith(b"HTTP/1.1 408 "), received[:200]
        assert elapsed >= READ_TIMEOUT * 0.9
        assert probe(http.client.HTTPConnection("127.0.0.1", handover.port, timeout=5)) is None


@stacks
def test_a_connection_that_sends_nothing_is_closed_at_the_read_timeout(stack: str) -> None:
    with Handover([*STACKS[stack], *LIMITS]) as handover:
        handover.start()
        sock = _connect(handover.port)
        received = _until_closed(sock, time.monotonic())
        sock.close()
        assert received == b""  # nothing was asked, nothing is answered


@stacks
def test_the_read_timeout_spares_idle_keep_alive_and_honest_slow_heads(stack: str) -> None:
    with Handover([*STACKS[stack], *LIMITS]) as handover:
        handover.start()
        connection = http.client.HTTPConnection("127.0.0.1", handover.port, timeout=5)
        assert probe(connection) is None
        sock = connection.sock
        assert sock is not None
        # Idle after a response: only the keep-alive time (30 s) may close it.
        assert not select.select([sock], [], [], READ_TIMEOUT * 2)[0], "idle connection closed"
        assert probe(connection) is None
        connection.close()
        # A head sent in parts, each well within the timeout, is answered.
        sock = _connect(handover.port)
        for part in (b"GET / HTTP/1.1\r\n", b"Host: test\r\n"):
            sock.sendall(part)
            assert not select.select([sock], [], [], READ_TIMEOUT / 4)[0]
        sock.sendall(b"\r\n")
        head = sock.recv(65536)
        sock.close()
        assert head.startswith(b"HTTP/1.1 200 "), head[:200]


@stacks
@pytest.mark.parametrize("at_once", [True, False], ids=["at-once", "trickled"])
def test_a_head_above_max_header_size_is_refused(stack: str, at_once: bool) -> None:
    """40 headers of 500 bytes: 20 KB, each line well below the 16 KiB limit."""
    headers = b"".join(b"X-Big-%d: %s\r\n" % (n, b"v" * 490) for n in range(40))
    with Handover([*STACKS[stack], "--max-header-size", "16384"]) as handover:
        handover.start()
        sock = _connect(handover.port)
        head = b"GET / HTTP/1.1\r\nHost: test\r\n" + headers
        if at_once:
            sock.sendall(head + b"\r\n")
        else:  # the head never ends: the server must stop buffering it
            sock.sendall(head)
        received = _until_closed(sock, time.monotonic())
        sock.close()
        assert received[:13] in (b"HTTP/1.1 431 ", b"HTTP/1.1 400 "), received[:200]


@stacks
def test_a_head_within_max_header_size_is_served(stack: str) -> None:
    headers = b"".join(b"X-Big-%d: %s\r\n" % (n, b"v" * 490) for n in range(20))
    with Handover([*STACKS[stack], "--max-header-size", "16384"]) as handover:
        handover.start()
        sock = _connect(handover.port)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n" + headers + b"\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        sock.close()
