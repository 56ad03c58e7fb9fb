"""``--shutdown-delay`` and ``--health-bind``: after TERM the server keeps accepting
for the delay while the readiness endpoint says draining (a load balancer or
Kubernetes stops sending), then drains and exits."""

from __future__ import annotations

import http.client
import os
import re
import signal
import time
from pathlib import Path

import pytest
from manager_harness import DEMO, TIMEOUT, Manager, Prober, running

pytestmark = pytest.mark.timeout(60)


def health_port(manager: Manager) -> int:
    match = manager.wait_line(r"health endpoint on 127\.0\.0\.1:(\d+)")
    return int(match.group(1))


def health(port: int) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("GET", "/ready")
        response = connection.getresponse()
        return response.status, response.read().decode().strip()
    finally:
        connection.close()


def test_after_term_it_serves_for_the_delay_saying_draining_then_drains(tmp_path: Path) -> None:
    options = ("--shutdown-delay", "1.5", "--health-bind", "127.0.0.1:0")
    with running(tmp_path, DEMO, *options) as manager:
        checks = health_port(manager)
        assert health(checks) == (200, "serving")
        with Prober(manager.port) as prober:
            manager.signal(signal.SIGTERM)
            signalled = time.monotonic()
            manager.wait_line(r"stop requested by SIGTERM: accepting 1.5 s more")
            assert health(checks) == (503, "draining")
            answered = prober.answered
            prober.wait_answers(answered + 5)  # still accepting, the whole delay long
            status = manager.status()["manager"]["restarts"]
            assert 0 < status["shutdown_delay_left"] <= 1.5
            assert status["health"] == "draining"
            manager.wait_line("the shutdown delay is over: draining")
            assert time.monotonic() - signalled >= 1.5
            prober.finish()
        assert manager.wait() == 0
        assert prober.failures == []


def test_a_second_term_during_the_delay_stops_at_once(tmp_path: Path) -> None:
    with running(tmp_path, DEMO, "--shutdown-delay", "60") as manager:
        manager.signal(signal.SIGTERM)
        manager.wait_line("accepting 60 s more")
        manager.signal(signal.SIGTERM)
        manager.wait_line("stop requested by SIGTERM")
        assert manager.wait() == 0
        assert not any(re.search("delay is over", line) for line in manager.lines)


def test_health_says_starting_until_the_first_generation_is_ready(tmp_path: Path) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    # A child that says READY=1 only once the test writes a line to the fifo.
    command = ["sh", "-c", f'read _ < "{fifo}"; systemd-notify --ready; exec sleep 60']
    options = ("--health-bind", "127.0.0.1:0", "--ready", "notify")
    with running(tmp_path, command, *options, ready_line=None) as manager:
        checks = health_port(manager)
        assert health(checks) == (503, "starting")
        with open(fifo, "w") as gate:
            gate.write("go\n")
        manager.wait_line("generation 1 ready after")
        assert health(checks) == (200, "serving")
