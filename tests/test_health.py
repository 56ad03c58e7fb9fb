"""The readiness endpoint (gapless.run.health): 503 starting, 200 serving, 503 draining."""

from __future__ import annotations

import http.client
import selectors
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gapless.run.health import HealthEndpoint
from gapless.sockets.addresses import TcpAddress, parse_bind

TIMEOUT = 10.0


@contextmanager
def endpoint(bind: str) -> Iterator[HealthEndpoint]:
    """The endpoint served by a selector loop on a thread, as the manager runs it."""
    selector = selectors.DefaultSelector()
    health = HealthEndpoint(parse_bind(bind), selector)
    stop_read, stop_write = socket.socketpair()
    selector.register(stop_read, selectors.EVENT_READ, None)

    def loop() -> None:
        while True:
            for key, _ in selector.select():
                if key.data is None:
                    return
                key.data()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield health
    finally:
        stop_write.send(b"x")
        thread.join(TIMEOUT)
        health.close()
        selector.close()
        stop_read.close()
        stop_write.close()


def probe(health: HealthEndpoint, method: str = "GET") -> tuple[int, str]:
    assert isinstance(health.address, TcpAddress)
    connection = http.client.HTTPConnection("127.0.0.1", health.address.port, timeout=TIMEOUT)
    try:
        connection.request(method, "/ready")
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_the_answer_follows_the_state() -> None:
    with endpoint("127.0.0.1:0") as health:
        assert probe(health) == (503, "starting\n")
        health.state = "serving"
        assert probe(health) == (200, "serving\n")
        assert probe(health, "HEAD") == (200, "")
        health.state = "draining"
        assert probe(health) == (503, "draining\n")


def test_a_paused_endpoint_leaves_probes_queued_for_whoever_serves_the_socket() -> None:
    with endpoint("127.0.0.1:0") as health:
        health.state = "serving"
        health.pause()
        assert isinstance(health.address, TcpAddress)
        with socket.create_connection(("127.0.0.1", health.address.port), TIMEOUT) as client:
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            health.sock.setblocking(True)
            health.sock.settimeout(TIMEOUT)
            queued, _ = health.sock.accept()  # the next instance would accept it
            queued.close()
            health.sock.setblocking(False)
        health.resume()
        assert probe(health) == (200, "serving\n")


def test_many_silent_probes_cannot_exhaust_it() -> None:
    with endpoint("127.0.0.1:0") as health:
        health.state = "serving"
        assert isinstance(health.address, TcpAddress)
        silent = [
            socket.create_connection(("127.0.0.1", health.address.port), TIMEOUT)
            for _ in range(100)
        ]
        assert probe(health) == (200, "serving\n")
        for sock in silent:
            sock.close()


def test_a_unix_path_it_bound_is_removed_at_close(tmp_path: Path) -> None:
    path = tmp_path / "health.sock"
    with endpoint(f"unix:{path}") as health:
        health.state = "serving"
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(TIMEOUT)
            client.connect(str(path))
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
    assert not path.exists()


@pytest.mark.parametrize("state", ["starting", "draining"])
def test_not_serving_is_503(state: str) -> None:
    with endpoint("127.0.0.1:0") as health:
        health.state = state
        assert probe(health)[0] == 503
