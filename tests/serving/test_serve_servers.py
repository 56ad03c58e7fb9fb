"""hypercorn and aiohttp under gapless serve's runner: the drain contract proven
as for uvicorn (test_serve_uvicorn.py), with generations started by hand the way
the manager starts them."""

from __future__ import annotations

import http.client
import shutil
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
SERVERS = {
    "hypercorn": runner_argv("serve_app:app", "--server", "hypercorn"),
    "aiohttp": runner_argv("serve_aiohttp_app:app"),
}
servers = pytest.mark.parametrize("server", list(SERVERS))


@servers
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_and_prober_lose_nothing_across_handovers(tmp_path: Path, server: str) -> None:
    """wrk with keep-alive and wrk with ``Connection: close`` at once, and the prober."""
    with Handover(SERVERS[server]) as handover:
        handover.start()
        kept = Wrk(handover.port, tmp_path, connections=8)
        closing = Wrk(handover.port, tmp_path, connections=8, close=True)
        prober = Prober(handover.port, threads=2)
        handover.handover(HANDOVERS)
        assert handover.wait_retired() == [0] * HANDOVERS
        results = {"keep-alive": kept.stop(), "close": closing.stop(), "prober": prober.stop()}
    for name, result in results.items():
        assert result.requests > (50 if name == "prober" else 300), (name, result.requests)
        assert result.failed == 0, (name, result.failures, result.examples[:3])


@servers
def test_slow_requests_in_flight_all_complete(server: str) -> None:
    with Handover(SERVERS[server]) as handover:
        first = handover.start()
        streaming = send_requests(handover.port, 100, "/stream?ms=1500")
        waiting = send_requests(handover.port, 100, "/slow?ms=1500")
        buffers: dict[socket.socket, bytes] = {}
        read_until(streaming, head_complete, buffers)  # their responses have begun on gen 1
        handover.start()
        read_until(streaming + waiting, response_complete, buffers)
        for sock in streaming + waiting:
            sock.close()
        assert handover.wait_retired() == [0]
    replies = [buffers[sock] for sock in streaming + waiting]
    assert all(reply.startswith(b"HTTP/1.1 200 ") for reply in replies)
    assert all(reply.endswith(f"pid {first.pid}".encode()) for reply in replies)


@servers
def test_idle_connection_is_answered_with_connection_close(server: str) -> None:
    with Handover([*SERVERS[server], "--keep-alive", "2"]) as handover:
        first = handover.start()
        idle = http.client.HTTPConnection("127.0.0.1", handover.port, timeout=5)
        assert probe(idle) is None  # now idle with keep-alive on generation 1
        handover.start()
        handover.wait_note(first, "STOPPING")
        idle.request("GET", "/")
        response = idle.getresponse()
        assert response.read() == f"pid {first.pid}".encode()
        assert response.getheader("connection") == "close"
        assert handover.wait_retired() == [0]


@servers
def test_websockets_are_told_then_closed_with_1012(server: str) -> None:
    with Handover([*SERVERS[server], "--ws-grace", "0.5"]) as handover:
        handover.start()
        clients = open_websockets(handover.port, 50)
        handover.start()
        pump_websockets(clients, lambda client: client.close_code is not None)
        assert handover.wait_retired() == [0]
    assert [client.texts for client in clients] == [["hello", "restarting"]] * 50
    assert {client.close_code for client in clients} == {1012}  # none 1006 (no close frame)
    for client in clients:
        client.sock.close()


@servers
def test_ready_comes_after_the_application_startup(tmp_path: Path, server: str) -> None:
    marker = tmp_path / "started"
    env = {"SERVE_APP_MARKER": str(marker), "SERVE_APP_STARTUP_MS": "300"}
    with Handover(SERVERS[server], env=env) as handover:
        child = handover.start()
        assert marker.read_text() == str(child.pid)  # startup ran before READY=1
        connection = http.client.HTTPConnection("127.0.0.1", handover.port, timeout=5)
        connection.request("GET", "/")
        assert connection.getresponse().read() == f"pid {child.pid}".encode()
        connection.close()


@servers
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_prober_sees_no_failure_across_handovers(tmp_path: Path, server: str) -> None:
    cert, key, client = self_signed(tmp_path)
    argv = [*SERVERS[server], "--certfile", str(cert), "--keyfile", str(key)]
    with Handover(argv) as handover:
        handover.start()
        prober = Prober(handover.port, threads=4, tls=client)
        handover.handover(3)
        assert handover.wait_retired() == [0] * 3
        result = prober.stop()
    assert result.requests > 50
    assert result.failed == 0, (result.failures, result.examples[:5])
