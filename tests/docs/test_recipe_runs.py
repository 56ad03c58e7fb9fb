"""The recipes' command line runs as written: the image's ``CMD`` (gunicorn under
``gapless run`` with the default ``--ready auto``, which waits for a worker's accept
after gunicorn's early ``READY=1``) serves docs/recipes/app.py, answers its health
endpoint and reloads. Only what cannot be the same here is changed: the venv's
path, the ports (free ones on 127.0.0.1), a control socket under tmp_path, and no
shutdown delay, so the stop does not wait 5 s."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from contextlib import suppress
from pathlib import Path

import pytest
from lines import Lines
from manager_harness import TIMEOUT, Manager, gapless_argv
from recipe_files import RECIPES, VENV_BIN, dockerfile, exec_form

BIN = str(Path(sys.executable).parent) + "/"

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which(BIN + "gunicorn") is None, reason="gunicorn not installed"),
]


def local_argv(control: Path) -> list[str]:
    (cmd,) = [arguments for word, arguments in dockerfile() if word == "CMD"]
    argv = exec_form(cmd)
    assert argv[:2] == [VENV_BIN + "gapless", "run"]
    here = {"web=0.0.0.0:8000": "web=127.0.0.1:0", "0.0.0.0:8081": "127.0.0.1:0"}
    args = [here.get(each, each.replace(VENV_BIN, BIN)) for each in argv[2:]]
    delay = args.index("--shutdown-delay")
    args[delay + 1] = "0"
    return gapless_argv("run", "--control", str(control), *args)


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
        return answer.status, answer.read().decode()


def test_the_image_command_serves_answers_ready_and_reloads(tmp_path: Path) -> None:
    shutil.copy(RECIPES / "app.py", tmp_path / "app.py")
    control = tmp_path / "control.sock"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", HOME=str(tmp_path))
    process = subprocess.Popen(
        local_argv(control), cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    manager = Manager(process, str(control))
    manager.start_reader()
    try:
        web = manager.wait_line(r"listening on (127\.0\.0\.1:\d+)").group(1)
        health = manager.wait_line(r"health endpoint on (127\.0\.0\.1:\d+)").group(1)
        manager.wait_line(r"generation 1 ready after \d+ ms \(notify\+accept\)")
        assert get(f"http://{web}/") == (200, "hello from gapless-app\n")
        assert get(f"http://{health}/ready")[0] == 200
        reload = subprocess.run(
            [*gapless_argv("reload", "--control", str(control))],
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 2,
        )
        assert reload.returncode == 0, reload.stderr
        assert "generation 2 ready after" in reload.stdout
        assert get(f"http://{web}/") == (200, "hello from gapless-app\n")
        manager.signal(signal.SIGTERM)
        assert manager.wait(TIMEOUT * 2) == 0, manager.log()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
        kill_generations(manager.stderr)


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
