"""The Python side of gapless serve: ``gapless.serve(app)`` becoming its own
manager, and ``gapless.serve_asyncio`` driving a ``websockets`` server."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from manager_harness import Manager, gapless_argv, running
from prober import Prober
from serve_harness import APPS, TIMEOUT, open_websockets, pump_websockets

from gapless.run.control import call


def test_serve_from_python_is_its_own_manager_and_reloads(tmp_path: Path) -> None:
    control = str(tmp_path / "control.sock")
    argv = [sys.executable, "serve_api_app.py", control, "127.0.0.1:0"]
    process = subprocess.Popen(argv, cwd=APPS, stderr=subprocess.PIPE, text=True)
    manager = Manager(process, control)
    manager.start_reader()
    try:
        manager.wait_line(r"generation 1 ready after")
        assert manager.status()["manager"]["pid"] == process.pid
        prober = Prober(manager.port, threads=2)
        for _ in range(2):
            result = call(control, "reload", timeout=TIMEOUT)
            assert result["ok"], result
        manager.wait_line(r"generation 2 \(pid \d+\) exited with code 0")
        probed = prober.stop()
        status = manager.status()
        assert status["manager"]["pid"] == process.pid  # the same process throughout
        assert [gen["generation"] for gen in status["generations"]] == [3]
        assert probed.requests > 50 and probed.failed == 0, probed.examples[:3]
        process.send_signal(signal.SIGTERM)
        assert manager.wait() == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)


def test_serve_asyncio_closes_websockets_with_1012_and_the_next_generation_serves(
    tmp_path: Path,
) -> None:
    command = [sys.executable, str(APPS / "serve_ws_asyncio.py")]
    with running(tmp_path, command) as manager:
        first = manager.status()["generations"][0]["pid"]
        clients = open_websockets(manager.port, 50)
        assert {tuple(client.texts) for client in clients} == {(f"hello {first}",)}
        result = subprocess.run(
            gapless_argv("reload", "--control", manager.control),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, result.stderr
        pump_websockets(clients, lambda client: client.close_code is not None)
        assert {client.close_code for client in clients} == {1012}
        pump_websockets(clients, lambda client: client.ended)
        for client in clients:
            client.sock.close()  # as a client does at the server's EOF; websockets waits for it
        second = manager.status()["generations"][-1]["pid"]
        [late] = open_websockets(manager.port, 1)
        assert late.texts == [f"hello {second}"]
        manager.wait_line(r"generation 1 \(pid \d+\) exited with code 0")
        late.sock.close()
