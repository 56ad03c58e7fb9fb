"""What ``gapless serve`` spends per request beyond plain uvicorn, kept at nothing
without giving up the drain's contract: a generation started alone sends
without Nagle's delay; a request received before the drain and answered after
it still says ``Connection: close``; the head-size limit still holds when a
read is larger than the limit but its heads are not."""

from __future__ import annotations

import socket

import pytest
from serve_harness import Handover, head_complete, read_until, response_complete, runner_argv

from gapless.serving.child import take_sockets

PARSERS = ["httptools", "h11"]


def test_a_listener_opened_by_bind_gives_connections_tcp_nodelay() -> None:
    # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, which a
    # socket(AF_INET, SOCK_STREAM) is not: each keep-alive answer, written as head
    # then body, waited for the client's delayed ACK (40 ms, ~700 req/s at -c32).
    [(_, listener)] = take_sockets(["127.0.0.1:0"])
    with listener, socket.create_connection(listener.getsockname(), timeout=5):
        conn, _ = listener.accept()
        with conn:
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


@pytest.mark.parametrize("parser", PARSERS)
def test_a_request_received_before_the_drain_is_answered_with_connection_close(
    parser: str,
) -> None:
    with Handover(runner_argv("serve_app:app", "--http", parser)) as handover:
        first = handover.start()
        slow = socket.create_connection(("127.0.0.1", handover.port), timeout=10)
        slow.sendall(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: test\r\n\r\n")
        # A later request's answer has begun: the slow one was read before it.
        streaming = socket.create_connection(("127.0.0.1", handover.port), timeout=10)
        streaming.sendall(b"GET /stream?ms=1500 HTTP/1.1\r\nHost: test\r\n\r\n")
        buffers: dict[socket.socket, bytes] = {}
        read_until([streaming], head_complete, buffers)
        handover.start()
        handover.wait_note(first, "STOPPING")
        read_until([slow, streaming], response_complete, buffers)
        assert slow.recv(1) == b""  # closed right after the response
        assert handover.wait_retired() == [0]
        slow.close()
        streaming.close()
    head = buffers[slow].partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200 "), head
    assert head.count(b"\r\nconnection: close") == 1, head


@pytest.mark.parametrize("parser", PARSERS)
def test_pipelined_small_heads_in_a_read_above_the_limit_are_all_served(parser: str) -> None:
    request = b"GET / HTTP/1.1\r\nHost: test\r\nX-Pad: %s\r\n\r\n" % (b"p" * 60)
    count = 2 * 16384 // len(request)  # one write twice the head limit
    with Handover(runner_argv("serve_app:app", "--http", parser)) as handover:
        handover.start()
        with socket.create_connection(("127.0.0.1", handover.port), timeout=10) as sock:
            sock.sendall(request * count)
            received = b""
            while received.count(b"HTTP/1.1 200 ") < count:
                chunk = sock.recv(65536)
                assert chunk, received[-300:]  # closed early: a 431 or 400 came instead
                received += chunk
    assert b"HTTP/1.1 4" not in received


def test_the_drain_ends_with_a_request_whose_client_left() -> None:
    # Requests' tasks are a plain set (no callback per request): the drain must
    # still wake when a task ends after its connection did.
    with Handover(runner_argv("serve_app:app")) as handover:
        first = handover.start()
        slow = socket.create_connection(("127.0.0.1", handover.port), timeout=10)
        slow.sendall(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: test\r\n\r\n")
        with socket.create_connection(("127.0.0.1", handover.port), timeout=10) as later:
            later.sendall(b"GET /stream?ms=0 HTTP/1.1\r\nHost: test\r\n\r\n")
            read_until([later], response_complete, {})  # so the slow one was read
        slow.close()  # its task goes on; no connection is left to close
        handover.start()
        handover.wait_note(first, "STOPPING")
        assert handover.wait_retired(timeout=10) == [0]  # not at the 30 s deadline
