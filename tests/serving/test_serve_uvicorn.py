"""gapless serve's child runner on uvicorn: readiness, and a drain that loses nothing.

Generations are started by hand the way the manager starts them: one listening
socket opened here, each generation spawned with it and a NOTIFY_SOCKET, the
next one spawned and awaited (READY=1) before the previous one gets SIGTERM.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
from pathlib import Path

import pytest
from load import Wrk
from prober import Prober, probe
from serve_harness import (
    Handover,
    head_complete,
    open_websockets,
    pump_websockets,
    read_until,
    response_complete,
    runner_argv,
    self_signed,
    send_requests,
)

HANDOVERS = 5
needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed: run scripts/setup.sh as root"
)


def test_ready_comes_after_lifespan_startup_and_serving(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    env = {"SERVE_APP_MARKER": str(marker), "SERVE_APP_STARTUP_MS": "300"}
    with Handover(runner_argv("serve_app:app"), env=env) as handover:
        child = handover.start()
        assert marker.read_text() == str(child.pid)  # lifespan startup ran before READY=1
        connection = http.client.HTTPConnection("127.0.0.1", handover.port, timeout=5)
        connection.request("GET", "/")
        assert connection.getresponse().read() == f"pid {child.pid}".encode()
        connection.close()
        child.send_signal(signal.SIGTERM)
        status = child.wait(10)
        assert status is not None and status.returncode == 0  # exits, not re-raising TERM


@needs_wrk
@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_wrk_keep_alive_loses_nothing_across_handovers(tmp_path: Path, parser: str) -> None:
    with Handover(runner_argv("serve_app:app", "--http", parser)) as handover:
        handover.start()
        wrk = Wrk(handover.port, tmp_path)
        handover.handover(HANDOVERS)
        assert handover.wait_retired() == [0] * HANDOVERS
        result = wrk.stop()
    assert result.requests > 1000
    assert result.failed == 0, result.examples


@needs_wrk
def test_wrk_connection_close_loses_nothing_across_handovers(tmp_path: Path) -> None:
    with Handover(runner_argv("serve_app:app")) as handover:
        handover.start()
        wrk = Wrk(handover.port, tmp_path, close=True)
        handover.handover(HANDOVERS)
        assert handover.wait_retired() == [0] * HANDOVERS
        result = wrk.stop()
    assert result.requests > 500
    assert result.failed == 0, result.examples


def test_prober_sees_no_failure_across_handovers() -> None:
    with Handover(runner_argv("serve_app:app")) as handover:
        handover.start()
        prober = Prober(handover.port, threads=6)
        handover.handover(HANDOVERS)
        assert handover.wait_retired() == [0] * HANDOVERS
        result = prober.stop()
    assert result.requests > 500
    assert result.failed == 0, (result.failures, result.examples[:5])


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_prober_sees_no_failure_across_handovers(tmp_path: Path) -> None:
    cert, key, client = self_signed(tmp_path)
    argv = runner_argv("serve_app:app", "--certfile", str(cert), "--keyfile", str(key))
    with Handover(argv) as handover:
        handover.start()
        prober = Prober(handover.port, threads=4, tls=client)
        handover.handover(HANDOVERS)
        assert handover.wait_retired() == [0] * HANDOVERS
        result = prober.stop()
    assert result.requests > 100
    assert result.failed == 0, (result.failures, result.examples[:5])


def test_slow_requests_in_flight_all_complete() -> None:
    with Handover(runner_argv("serve_app:app")) as handover:
        first = handover.start()
        streaming = send_requests(handover.port, 100, "/stream?ms=1500")
        waiting = send_requests(handover.port, 100, "/slow?ms=1500")
        buffers: dict[socket.socket, bytes] = {}
        read_until(streaming, head_complete, buffers)  # their responses have begun on gen 1
        handover.start()
        read_until(streaming + waiting, response_complete, buffers)
        for sock in streaming + waiting:
            sock.close()  # else generation 1 keeps the streamed ones until keep-alive expiry
        assert handover.wait_retired() == [0]
    replies = [buffers[sock] for sock in streaming + waiting]
    assert all(reply.startswith(b"HTTP/1.1 200 ") for reply in replies)
    assert all(reply.endswith(f"pid {first.pid}".encode()) for reply in replies)


def test_idle_and_unread_connections_are_answered_during_the_drain() -> None:
    with Handover(runner_argv("serve_app:app", "--keep-alive", "2")) as handover:
        first = handover.start()
        idle = http.client.HTTPConnection("127.0.0.1", handover.port, timeout=5)
        assert probe(idle) is None  # now idle with keep-alive on generation 1
        fresh = socket.create_connection(("127.0.0.1", handover.port))
        assert probe(http.client.HTTPConnection("127.0.0.1", handover.port)) is None
        handover.start()
        handover.wait_note(first, "STOPPING")  # generation 1 is draining from here on
        idle.request("GET", "/")
        response = idle.getresponse()
        assert response.read() == f"pid {first.pid}".encode()
        assert response.getheader("connection") == "close"
        fresh.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        buffers: dict[socket.socket, bytes] = {}
        read_until([fresh], response_complete, buffers)
        assert buffers[fresh].startswith(b"HTTP/1.1 200 ")
        assert handover.wait_retired() == [0]
        fresh.close()


def test_connection_never_used_expires_like_keep_alive(tmp_path: Path) -> None:
    with Handover(runner_argv("serve_app:app", "--keep-alive", "1")) as handover:
        first = handover.start()
        silent = socket.create_connection(("127.0.0.1", handover.port))
        assert probe(http.client.HTTPConnection("127.0.0.1", handover.port)) is None
        handover.start()
        assert silent.recv(1) == b""  # closed cleanly (FIN) after the keep-alive time
        assert first.wait(10) is not None
        silent.close()


def test_deadline_cuts_what_remains_and_logs_the_count() -> None:
    with Handover(runner_argv("serve_app:app", "--drain-timeout", "1")) as handover:
        handover.capture_stderr = True
        first = handover.start()
        stuck = send_requests(handover.port, 3, "/stream?ms=60000")
        read_until(stuck, head_complete, {})
        handover.capture_stderr = False
        handover.start()
        status = first.wait(10)
        assert status is not None and status.returncode == 0
        assert first.stderr_fd is not None
        log = _read_all(first.stderr_fd)
        assert "3 connections closed, 3 requests cancelled" in log, log
        for sock in stuck:
            sock.close()


def test_second_signal_cuts_at_once() -> None:
    with Handover(runner_argv("serve_app:app", "--drain-timeout", "60")) as handover:
        child = handover.start()
        stuck = send_requests(handover.port, 2, "/stream?ms=60000")
        read_until(stuck, head_complete, {})
        child.send_signal(signal.SIGTERM)
        assert child.wait(0.5) is None  # draining: the requests hold it
        child.send_signal(signal.SIGTERM)
        status = child.wait(5)
        assert status is not None and status.returncode == 0
        for sock in stuck:
            sock.close()


def test_websockets_are_told_then_closed_with_1012() -> None:
    with Handover(runner_argv("serve_app:app", "--ws-grace", "0.5")) as handover:
        handover.start()
        clients = open_websockets(handover.port, 100)
        handover.start()
        pump_websockets(clients, lambda client: client.close_code is not None)
        assert handover.wait_retired() == [0]
    assert [client.texts for client in clients] == [["hello", "restarting"]] * 100
    assert {client.close_code for client in clients} == {1012}  # none 1006 (no close frame)
    for client in clients:
        client.sock.close()


@needs_wrk
def test_plain_uvicorn_loses_requests_in_the_same_handover(tmp_path: Path) -> None:
    """The baseline, proving the handover test can fail: uvicorn's own SIGTERM drain
    closes keep-alive connections that wrk is about to reuse."""
    argv = [*runner_argv("serve_app:app")[:1], "-m", "uvicorn", "--fd", "3", "serve_app:app"]
    with Handover([*argv, "--no-access-log"], ready="accept") as handover:
        handover.start()
        wrk = Wrk(handover.port, tmp_path)
        handover.handover(HANDOVERS)
        handover.wait_retired()
        result = wrk.stop()
    assert result.failed > 0


def _read_all(fd: int) -> str:
    """What the exited child wrote to its stderr pipe (non-blocking, at EOF by now)."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
