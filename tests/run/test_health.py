"""The readiness endpoint (gapless.run.extras.health): 503 starting, 200 serving, 503 draining."""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import select
import selectors
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from manager_harness import DEMO, running

from gapless.run.extras.health import HealthEndpoint
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


# Faults: fd exhaustion, a probe that raises ----------------------------------------


@contextmanager
def no_fd_left() -> Iterator[None]:
    """Every fd this process may open is taken (RLIMIT_NOFILE lowered, then filled)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
    taken = []
    try:
        with contextlib.suppress(OSError):
            while True:
                taken.append(os.dup(0))
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_out_of_fds_a_pending_probe_is_answered_and_the_loop_does_not_spin() -> None:
    with selectors.DefaultSelector() as selector:
        health = HealthEndpoint(parse_bind("127.0.0.1:0"), selector)
        health.state = "serving"
        assert isinstance(health.address, TcpAddress)
        with socket.create_connection(("127.0.0.1", health.address.port), TIMEOUT) as client:
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with no_fd_left():
                for key, _ in selector.select(TIMEOUT):
                    key.data()
                still_readable = selector.select(0)
            assert still_readable == [], "the pending probe keeps the loop spinning"
            assert client.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
        health.close()


class Faulty(HealthEndpoint):
    """An endpoint with a bug for one path: its answer raises."""

    def response(self, request: bytes) -> bytes:
        if request.startswith(b"GET /boom "):
            raise RuntimeError("boom")
        return super().response(request)


def test_a_probe_whose_answer_raises_is_dropped_alone() -> None:
    errors: list[str] = []
    with selectors.DefaultSelector() as selector:
        health = Faulty(parse_bind("127.0.0.1:0"), selector, on_error=errors.append)
        health.state = "serving"
        assert isinstance(health.address, TcpAddress)
        address = ("127.0.0.1", health.address.port)
        with (
            socket.create_connection(address, TIMEOUT) as boom,
            socket.create_connection(address, TIMEOUT) as good,
        ):
            boom.sendall(b"GET /boom HTTP/1.0\r\n\r\n")
            good.sendall(b"GET / HTTP/1.0\r\n\r\n")
            answers: dict[str, bytes] = {}
            while len(answers) < 2:
                ready = selector.select(TIMEOUT)
                assert ready, f"no event in {TIMEOUT} s; answers so far: {answers}"
                for key, _ in ready:
                    key.data()
                for name, sock in (("boom", boom), ("good", good)):
                    if name not in answers and select.select([sock], [], [], 0)[0]:
                        answers[name] = sock.recv(4096)
        health.close()
    assert answers["boom"] == b""  # closed, unanswered
    assert answers["good"].startswith(b"HTTP/1.1 200 OK\r\n")
    assert errors == ["health endpoint dropped a probe: RuntimeError: boom"]


def test_a_manager_out_of_fds_answers_probes_and_recovers(tmp_path: Path) -> None:
    options = ("--health-bind", "127.0.0.1:0")
    with running(tmp_path, DEMO, *options) as manager:
        port = int(manager.wait_line(r"health endpoint on 127\.0\.0\.1:(\d+)").group(1))
        pid = manager.process.pid
        limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        open_fds = len(os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_fds + 4, limits[1]))
        try:
            # More silent probes than the manager has fds: it holds the first few,
            # the rest queue up, and the last one, which asks, is queued behind them.
            idle = [socket.create_connection(("127.0.0.1", port), TIMEOUT) for _ in range(20)]
            with socket.create_connection(("127.0.0.1", port), TIMEOUT) as asking:
                asking.sendall(b"GET / HTTP/1.0\r\n\r\n")
                asking.settimeout(TIMEOUT)
                assert asking.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
            for sock in idle:
                sock.close()
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        assert manager.status()["ok"]
        assert health_probe(port) == 200


def health_probe(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status
    finally:
        connection.close()
