"""What ``gapless serve`` spends per request beyond plain uvicorn, kept at nothing:
a generation started alone sends without Nagle's delay, and the drain's
bookkeeping adds no work to a request served outside a drain."""

from __future__ import annotations

import socket

from gapless.serving.child import take_sockets


def test_a_listener_opened_by_bind_gives_connections_tcp_nodelay() -> None:
    # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, which a
    # socket(AF_INET, SOCK_STREAM) is not: each keep-alive answer, written as head
    # then body, waited for the client's delayed ACK (40 ms, ~700 req/s at -c32).
    [(_, listener)] = take_sockets(["127.0.0.1:0"])
    with listener, socket.create_connection(listener.getsockname(), timeout=5):
        conn, _ = listener.accept()
        with conn:
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
