"""``gapless serve --server granian``: granian's Rust HTTP stack on the manager's
sockets, readiness, and a drain that loses nothing a keep-alive client sends."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from load import Wrk
from manager_harness import TIMEOUT, Manager, gapless_argv
from prober import Prober, probe
from serve_harness import (
    APPS,
    Handover,
    open_websockets,
    pump_websockets,
    read_until,
    response_complete,
    runner_argv,
    send_requests,
)

pytest.importorskip("granian")

RELOADS = 3
GRANIAN = runner_argv("serve_app:app", "--server", "granian")
needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


@contextmanager
def serving(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Manager]:
    """``gapless serve --server granian ARGS`` on 127.0.0.1:0; waits for generation 1."""
    control = str(tmp_path / "control.sock")
    argv = gapless_argv(
        "serve", "serve_app:app", "--server", "granian", *args, "--control", control,
        "--no-access-log", "--bind", "127.0.0.1:0",
    )  # fmt: skip
    process = subprocess.Popen(
        argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=APPS,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    manager = Manager(process, control)
    manager.start_reader()
    try:
        manager.wait_line(r"generation 1 ready after")
        yield manager
    finally:
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                manager.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(TIMEOUT)


def reload(manager: Manager) -> None:
    result = subprocess.run(
        gapless_argv("reload", "--control", manager.control),
        capture_output=True, text=True, timeout=TIMEOUT, cwd=APPS,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@needs_wrk
def test_wrk_keep_alive_and_prober_lose_nothing_across_reloads(tmp_path: Path) -> None:
    with serving(tmp_path) as manager:
        wrk = Wrk(manager.port, tmp_path, connections=16)
        prober = Prober(manager.port, threads=2)
        for _ in range(RELOADS):
            reload(manager)
        for number in range(1, RELOADS + 1):
            manager.wait_line(rf"generation {number} \(pid \d+\) exited with code 0")
        results = {"wrk": wrk.stop(), "prober": prober.stop()}
    for name, result in results.items():
        assert result.requests > (50 if name == "prober" else 1000), (name, result.requests)
        assert result.failed == 0, (name, result.failures, result.examples[:3])


def test_requests_in_flight_complete_on_the_old_generation() -> None:
    with Handover(GRANIAN) as handover:
        first = handover.start()
        waiting = send_requests(handover.port, 50, "/slow?ms=800")
        handover.start()
        buffers: dict[socket.socket, bytes] = {}
        read_until(waiting, response_complete, buffers)
        for sock in waiting:
            sock.close()
        assert handover.wait_retired() == [0]
    replies = [buffers[sock] for sock in waiting]
    assert all(reply.startswith(b"HTTP/1.1 200 ") for reply in replies)
    assert all(reply.endswith(f"pid {first.pid}".encode()) for reply in replies)


def test_idle_connection_is_answered_with_connection_close() -> None:
    with Handover([*GRANIAN, "--keep-alive", "2"]) as handover:
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


def test_the_drain_deadline_cuts_a_request_and_says_so(tmp_path: Path) -> None:
    with serving(tmp_path, "--drain-timeout", "0.5") as manager:
        slow = send_requests(manager.port, 1, "/slow?ms=20000")
        reload(manager)
        manager.wait_line(r"drain cut by the deadline after 0\.\d+ s: 1 connections closed")
        manager.wait_line(r"generation 1 \(pid \d+\) exited")
        slow[0].close()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--read-timeout", "3"], "--read-timeout is ignored by granian: drop it"),
        (["--http", "h11"], "--http is ignored by granian: drop it"),
        (["--max-header-size", "4096"], "--max-header-size 4096 is below granian's least"),
    ],
)
def test_an_option_granian_would_ignore_is_refused(option: list[str], message: str) -> None:
    result = subprocess.run(
        [*GRANIAN, *option, "--bind", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=APPS,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith(f"gapless serve: error: {message}"), lines


def test_missing_granian_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    (tmp_path / "granian.py").write_text("raise ImportError('no granian here')\n")
    paths = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    result = subprocess.run(
        [*GRANIAN, "--bind", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=APPS, env=env,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "gapless serve: error: --server granian needs granian: pip install 'gapless[granian]'"
    )


def test_websockets_are_told_then_closed_with_1012() -> None:
    with Handover([*GRANIAN, "--ws-grace", "0.5"]) as handover:
        handover.start()
        clients = open_websockets(handover.port, 20)
        handover.start()
        pump_websockets(clients, lambda client: client.close_code is not None)
        assert handover.wait_retired() == [0]
    assert [client.texts for client in clients] == [["hello", "restarting"]] * 20
    assert {client.close_code for client in clients} == {1012}
    for client in clients:
        client.sock.close()
