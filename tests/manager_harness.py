"""Helpers for tests of ``gapless run``: a manager in a subprocess whose stderr is
read line by line (each wait is on a line, with a timeout), a control client, and
a prober that counts failed requests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import prober
from lines import Lines

from gapless.run.control import call

APPS = Path(__file__).parent / "apps"
TIMEOUT = 15.0
PYTHON = sys.executable
DEMO = [PYTHON, "-m", "gapless.demo", "--bind", "web=127.0.0.1:0"]


def app(name: str, *args: str) -> list[str]:
    return [PYTHON, str(APPS / name), *args]


def gapless_argv(*args: str) -> list[str]:
    return [PYTHON, "-m", "gapless.cli", *args]


class Manager:
    """A ``gapless run`` subprocess and what it wrote on stderr so far (once
    :meth:`start_reader` has begun following it)."""

    def __init__(self, process: subprocess.Popen[str], control: str) -> None:
        self.process = process
        self.control = control
        self.stderr: Lines | None = None

    def start_reader(self) -> None:
        assert self.process.stderr is not None
        self.stderr = Lines(self.process.stderr)

    @property
    def lines(self) -> list[str]:
        return self._stderr.lines

    @property
    def _stderr(self) -> Lines:
        assert self.stderr is not None, "start_reader() first"
        return self.stderr

    def wait_line(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """The first line not matched before that matches ``pattern``, read so far or
        still to come; fails loudly on timeout or EOF."""
        return self._stderr.wait_line(pattern, timeout)

    def log(self) -> str:
        return self._stderr.tail(40)

    def call(self, cmd: str, **fields: Any) -> dict[str, Any]:
        return call(self.control, cmd, timeout=TIMEOUT, **fields)

    def status(self) -> dict[str, Any]:
        return self.call("status")

    @property
    def port(self) -> int:
        for line in self.lines:
            if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                return int(match.group(1))
        raise AssertionError("no listening line yet:\n" + self.log())

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = TIMEOUT) -> int:
        code = self.process.wait(timeout)
        self.read_to_end(timeout)  # the rest of stderr, for assertions
        return code

    def read_to_end(self, timeout: float = TIMEOUT) -> None:
        """Collect stderr up to its end (the manager has exited or was killed)."""
        self._stderr.read_to_end(timeout)


@contextmanager
def running(
    tmp_path: Path,
    command: Sequence[str],
    *options: str,
    binds: Sequence[str] = ("web=127.0.0.1:0",),
    env: Mapping[str, str] | None = None,
    ready_line: str | None = r"generation 1 ready after",
) -> Iterator[Manager]:
    """Start ``gapless run``; wait until generation 1 is ready; stop it at the end."""
    control = str(tmp_path / "control.sock")
    argv = gapless_argv("run", "--control", control, *options)
    for bind in binds:
        argv += ["--bind", bind]
    process = subprocess.Popen(
        [*argv, "--", *command],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ if env is None else env),
        cwd=tmp_path,
    )
    manager = Manager(process, control)
    manager.start_reader()
    try:
        if ready_line is not None:
            manager.wait_line(ready_line)
        yield manager
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
        _kill_leftovers(manager)


def _kill_leftovers(manager: Manager) -> None:
    """Children of a killed manager: SIGKILL their groups so no test leaks processes."""
    manager.read_to_end()  # the lines no test waited for name generations too
    for line in manager.lines:
        if match := re.search(r"started as pid (\d+)", line):
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(int(match.group(1)), signal.SIGKILL)


def write_command(path: Path, argv: Sequence[str]) -> list[str]:
    """Make ``path`` hold ``argv`` for apps/switch.py; return switch.py's argv."""
    path.write_text(json.dumps(list(argv)))
    return app("switch.py", str(path))


class Prober(prober.Prober):
    """``prober.Prober``, one thread, with this module's request timeout."""

    def __init__(self, port: int) -> None:
        super().__init__(port, timeout=TIMEOUT)
