"""gapless serve's child runner with a WSGI application: the same drain as ASGI.

Generations are started by hand the way the manager starts them (see
test_serve_uvicorn.py); the application runs in a2wsgi's thread pool.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from load import Wrk
from prober import Prober
from serve_harness import Handover, read_until, response_complete, runner_argv, send_requests

HANDOVERS = 5
WSGI = runner_argv("serve_wsgi_app:app", "--threads", "64")


def test_wsgi_app_is_detected_and_served() -> None:
    with Handover(WSGI) as handover:
        child = handover.start()
        socks = send_requests(handover.port, 1, "/")
        buffers: dict[socket.socket, bytes] = {}
        read_until(socks, response_complete, buffers)
        assert buffers[socks[0]].endswith(f"pid {child.pid}".encode())
        socks[0].close()


@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed: run scripts/setup.sh"
)
@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "connection-close"])
def test_wrk_loses_nothing_across_handovers(tmp_path: Path, close: bool) -> None:
    with Handover(WSGI) as handover:
        handover.start()
        wrk = Wrk(handover.port, tmp_path, close=close)
        prober = Prober(handover.port, threads=2)
        handover.handover(HANDOVERS)
        assert handover.wait_retired() == [0] * HANDOVERS
        result, probed = wrk.stop(), prober.stop()
    assert result.requests > 500
    assert result.failed == 0, result.examples
    assert probed.failed == 0, (probed.failures, probed.examples[:5])


def test_slow_requests_in_flight_all_complete() -> None:
    with Handover(WSGI) as handover:
        first = handover.start()
        slow = send_requests(handover.port, 60, "/slow?ms=1500")
        handover.start()
        buffers: dict[socket.socket, bytes] = {}
        read_until(slow, response_complete, buffers)
        for sock in slow:
            sock.close()
        assert handover.wait_retired() == [0]
    assert all(buffers[sock].startswith(b"HTTP/1.1 200 ") for sock in slow)
    assert all(buffers[sock].endswith(f"pid {first.pid}".encode()) for sock in slow)
