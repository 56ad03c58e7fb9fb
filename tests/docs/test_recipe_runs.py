"""The recipes' command lines run as written, gunicorn under ``gapless run`` with the
default ``--ready auto`` (which waits for a worker's accept after gunicorn's early
``READY=1``): the image's ``CMD``, and the systemd service's ``ExecStart`` on the
socket of its ``.socket`` unit, passed by ``systemd-socket-activate`` as systemd
would. Each serves docs/recipes/app.py, answers its health endpoint, reloads and
stops. Only what cannot be the same here is changed: the venv's path, the ports
(free ones on 127.0.0.1), a control socket under tmp_path, and no shutdown delay,
so the stop does not wait 5 s."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from lines import Lines
from manager_harness import PYTHON, TIMEOUT, Manager, gapless_argv
from recipe_files import RECIPES, VENV_BIN, dockerfile, exec_form

BIN = str(Path(sys.executable).parent) + "/"
HELLO = (200, "hello from gapless-app\n")

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which(BIN + "gunicorn") is None, reason="gunicorn not installed"),
]


def here(argv: Sequence[str], control: Path, local: dict[str, str]) -> list[str]:
    """``gapless run ...`` of a recipe, run from this venv with ``local`` values."""
    assert list(argv[:2]) == [VENV_BIN + "gapless", "run"], argv
    args = [local.get(each, each.replace(VENV_BIN, BIN)) for each in argv[2:]]
    if "--shutdown-delay" in args:
        args[args.index("--shutdown-delay") + 1] = "0"
    if "--control" in args:
        args[args.index("--control") + 1] = str(control)
    else:
        args[:0] = ["--control", str(control)]
    return gapless_argv("run", *args)


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
        return answer.status, answer.read().decode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def started(tmp_path: Path, argv: Sequence[str], control: Path) -> Iterator[Manager]:
    shutil.copy(RECIPES / "app.py", tmp_path / "app.py")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", HOME=str(tmp_path))
    process = subprocess.Popen(argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    manager = Manager(process, str(control))
    manager.start_reader()
    try:
        yield manager
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
        kill_generations(manager.stderr)


def reload_and_stop(manager: Manager, web: str) -> None:
    control = manager.control
    reload = subprocess.run(
        gapless_argv("reload", "--control", control),
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
    )
    assert reload.returncode == 0, reload.stderr
    assert "generation 2 ready after" in reload.stdout
    assert get(f"http://{web}/") == HELLO
    manager.signal(signal.SIGTERM)
    assert manager.wait(TIMEOUT * 2) == 0, manager.log()


def test_the_image_command_serves_answers_ready_and_reloads(tmp_path: Path) -> None:
    (cmd,) = [arguments for word, arguments in dockerfile() if word == "CMD"]
    local = {"web=0.0.0.0:8000": "web=127.0.0.1:0", "0.0.0.0:8081": "127.0.0.1:0"}
    control = tmp_path / "control.sock"
    with started(tmp_path, here(exec_form(cmd), control, local), control) as manager:
        web = manager.wait_line(r"listening on (127\.0\.0\.1:\d+)").group(1)
        health = manager.wait_line(r"health endpoint on (127\.0\.0\.1:\d+)").group(1)
        manager.wait_line(r"generation 1 ready after \d+ ms \(notify\+accept\)")
        assert get(f"http://{web}/") == HELLO
        assert get(f"http://{health}/ready")[0] == 200
        reload_and_stop(manager, web)


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((RECIPES / "systemd" / name).read_text())
    return parser


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="no systemd")
def test_the_service_serves_the_socket_units_socket_and_reloads(tmp_path: Path) -> None:
    socket_unit, service = unit("gapless-app.socket"), unit("gapless-app.service")
    port = free_port()
    assert socket_unit["Socket"]["ListenStream"] == "8000"
    exec_start = shlex.split(service["Service"]["ExecStart"])
    assert "--bind" not in exec_start  # it takes the socket systemd passes
    control = tmp_path / "control.sock"
    local = {"127.0.0.1:8081": "127.0.0.1:0"}
    activate = ["systemd-socket-activate", f"--listen=127.0.0.1:{port}"]
    activate += [f"--fdname={socket_unit['Socket']['FileDescriptorName']}", PYTHON]
    argv = [*activate, *here(exec_start, control, local)[1:]]
    with started(tmp_path, argv, control) as manager:
        manager.wait_line(rf"Listening on 127\.0\.0\.1:{port}")  # systemd-socket-activate's
        # It execs the service at the first connection, as systemd does for a
        # .socket unit; that connection waits in the accept queue meanwhile.
        assert get(f"http://127.0.0.1:{port}/") == HELLO
        manager.wait_line(rf"listening on 127\.0\.0\.1:{port} as web\b")
        health = manager.wait_line(r"health endpoint on (127\.0\.0\.1:\d+)").group(1)
        manager.wait_line(r"generation 1 ready after \d+ ms \(notify\+accept\)")
        assert get(f"http://{health}/ready")[0] == 200
        reload_and_stop(manager, f"127.0.0.1:{port}")


def kill_generations(lines: Lines | None) -> None:
    """What a failed test left running: each generation's process group."""
    if lines is None:
        return
    lines.read_to_end(TIMEOUT)
    for line in lines.lines:
        if " started as pid " in line:
            pid = int(line.rsplit(" ", 1)[1])
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
