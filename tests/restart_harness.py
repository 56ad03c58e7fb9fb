"""Helpers for tests of restarts driven from outside (``gapless run --handoff``, real
supervisors): a line follower with waits on lines, instances whose detached
managers outlive them, slow requests held open across a restart, and a cleanup
that kills every process an instance's log names."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from lines import Lines
from manager_harness import DEMO, gapless_argv

TIMEOUT = 15.0


def kill_everything_named(lines: Lines) -> None:
    """SIGKILL every gapless process and generation group the log names."""
    lines.collect()
    for line in lines.lines:
        for match in re.finditer(r"gapless\[(\d+)\]|manager runs as pid (\d+)", line):
            with suppress(ProcessLookupError):
                os.kill(int(match.group(1) or match.group(2)), signal.SIGKILL)
        if match := re.search(r"started as pid (\d+)", line):
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(int(match.group(1)), signal.SIGKILL)


class Instances:
    """``gapless run --handoff`` instances started by hand, as a supervisor would."""

    def __init__(self, tmp_path: Path, options: Sequence[str], command: Sequence[str]) -> None:
        self.tmp_path = tmp_path
        self.control = str(tmp_path / "control.sock")
        self.options = ["--control", self.control, "--handoff", *options]
        self.command = list(command)
        self.started: list[tuple[subprocess.Popen[str], Lines]] = []

    def start(self, command: Sequence[str] | None = None) -> tuple[subprocess.Popen[str], Lines]:
        process = subprocess.Popen(
            [*gapless_argv("run", *self.options), "--", *(command or self.command)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=self.tmp_path,
        )
        started = (process, Lines(process.stderr))  # type: ignore[arg-type]
        self.started.append(started)
        return started

    def kill_all(self) -> None:
        for process, lines in self.started:
            with suppress(ProcessLookupError):
                process.kill()
            process.wait(TIMEOUT)
            kill_everything_named(lines)


@contextmanager
def instances(
    tmp_path: Path,
    *options: str,
    command: Sequence[str] = DEMO,
    binds: Sequence[str] = ("web=127.0.0.1:0",),
) -> Iterator[Instances]:
    """Instances of ``gapless run --handoff OPTIONS --bind B... -- COMMAND``; every
    process they name is killed at the end."""
    for bind in binds:
        options += ("--bind", bind)
    started = Instances(tmp_path, options, command)
    try:
        yield started
    finally:
        started.kill_all()


def port_of(lines: Lines) -> int:
    for line in lines.lines:
        if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
            return int(match.group(1))
    raise AssertionError("no listening line yet:\n" + lines.tail())


class SlowRequest(threading.Thread):
    """A request for ``duration`` whose connection is queued on the server before the
    constructor returns; the thread reads the answer's status code."""

    def __init__(self, port: int, duration: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        request = f"GET /?duration={duration} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        self.sock.sendall(request.encode())
        self.status: int | None = None
        self.error: str | None = None
        self.start()

    def run(self) -> None:
        data = b""
        try:
            with self.sock:
                while chunk := self.sock.recv(65536):
                    data += chunk
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        first = data.split(b"\r\n", 1)[0].split()
        if len(first) > 1 and first[1].isdigit():
            self.status = int(first[1])
        elif self.error is None:
            self.error = f"no HTTP answer: {data[:80]!r}"

    def result(self) -> int | str | None:
        self.join(30)
        return self.error or self.status
