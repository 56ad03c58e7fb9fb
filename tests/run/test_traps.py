"""The silent traps of ``gapless run`` (issue 13): a READY=1 from a generation that
does not accept yet, a generation that serves on a port of its own, and the demo
under ``gapless run`` without ``--bind``."""

from __future__ import annotations

import http.client
import os
import socket
import time
from pathlib import Path

import pytest
from manager_harness import APPS, DEMO, PYTHON, TIMEOUT, app, running, write_command

from gapless.sockets.sockdiag import tcp_listeners

SRC = Path(__file__).parents[2] / "src"
OWN_PORT = r"generation 1 \(pid \d+\) listens on 127\.0\.0\.1:\d+ itself instead of the sockets"


def test_auto_waits_after_ready_until_the_generation_accepts(tmp_path: Path) -> None:
    go = tmp_path / "go"
    os.mkfifo(go)
    with running(tmp_path, app("ready_before_accept.py", str(go)), ready_line=None) as manager:
        first = manager.wait_line(r"generation 1 (sent READY=1|ready after)")
        assert "sent READY=1" in first.string, manager.log()
        with open(go, "w") as fifo:  # now it may accept
            fifo.write("go")
        manager.wait_line(r"generation 1 ready after \d+ ms \(notify\+accept\)")


def test_a_generation_on_a_port_of_its_own_fails_the_start_at_once(tmp_path: Path) -> None:
    command = [PYTHON, "-m", "http.server", "0", "--bind", "127.0.0.1"]
    began = time.monotonic()
    with running(tmp_path, command, ready_line=None) as manager:
        manager.wait_line(OWN_PORT)
        assert manager.wait() == 1
        took = time.monotonic() - began
    failed = [line for line in manager.lines if "start failed" in line]
    assert failed and "make it serve LISTEN_FDS" in failed[0], manager.log()
    assert took < 10, f"took {took:.1f} s, not far below --ready-timeout 60 s"


def test_a_reload_onto_a_port_of_its_own_fails_and_the_old_generation_serves_on(
    tmp_path: Path,
) -> None:
    command = tmp_path / "command.json"
    with running(tmp_path, write_command(command, DEMO)) as manager:
        write_command(command, [PYTHON, "-m", "http.server", "0", "--bind", "127.0.0.1"])
        result = manager.call("reload")
        assert not result["ok"] and "make it serve LISTEN_FDS" in result["error"], result
        assert manager.status()["generations"][0]["state"] == "active", manager.log()


def test_tcp_listeners_names_the_address_of_each_listening_socket() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as v4,
        socket.create_server(("::1", 0), family=socket.AF_INET6) as v6,
    ):
        found = tcp_listeners()
        for sock in (v4, v6):
            host, port = sock.getsockname()[:2]
            assert found[os.fstat(sock.fileno()).st_ino] == (host, port)


def test_the_demo_without_bind_serves_on_the_sockets_it_is_given(tmp_path: Path) -> None:
    with running(tmp_path, [PYTHON, "-m", "gapless.demo"]) as manager:
        connection = http.client.HTTPConnection("127.0.0.1", manager.port, timeout=TIMEOUT)
        connection.request("GET", "/")
        body = connection.getresponse().read().decode()
        connection.close()
        assert body.startswith("pid "), body
        assert manager.call("reload")["ok"], manager.log()


def test_gunicorn_as_the_readme_runs_it_is_ready_only_once_a_worker_accepts(
    tmp_path: Path,
) -> None:
    gunicorn = Path(PYTHON).parent / "gunicorn"
    if not gunicorn.exists():
        pytest.skip("gunicorn is not installed")
    # HOME: gunicorn 27's control socket goes to ~/.gunicorn, not the user's.
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": f"{SRC}:{APPS}"}
    command = [str(gunicorn), "-w", "2", "run_app:wsgi"]
    with running(tmp_path, command, env=env, ready_line=None) as manager:
        manager.wait_line(r"generation 1 ready after \d+ ms \((notify\+)?accept\)")
        assert manager.call("reload")["ok"], manager.log()
        manager.wait_line(r"generation 2 ready after \d+ ms \((notify\+)?accept\)")
