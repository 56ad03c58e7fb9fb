"""Helpers for tests that run real servers: a systemd-like notify socket that
follows upgrades, HTTP requests that report instead of raising, pid waits."""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from gapless.systemd.notify_receiver import Notification, NotifyReceiver

APPS = Path(__file__).parent / "apps"
TIMEOUT = 30.0


@dataclass
class Reply:
    status: int | None
    body: str
    error: str | None = None

    @property
    def pid(self) -> int | None:
        parts = self.body.split()
        return int(parts[1]) if len(parts) > 1 and parts[0] == "pid" else None


def get(port: int, path: str = "/", timeout: float = TIMEOUT) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return Reply(response.status, response.read().decode())
    except (OSError, http.client.HTTPException) as exc:
        return Reply(None, "", f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()


def wait_exit(pid: int, timeout: float = TIMEOUT) -> bool:
    """Wait for any process (not only a child) to end; False on timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@dataclass
class Supervised:
    """A server started with a NOTIFY_SOCKET, the way systemd starts Type=notify."""

    process: subprocess.Popen[str]
    receiver: NotifyReceiver
    pids: list[int] = field(default_factory=list)

    @property
    def main_pid(self) -> int:
        return self.pids[-1]

    def wait_notify(
        self, accept: Callable[[Notification], bool], timeout: float = TIMEOUT
    ) -> Notification:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not select.select([self.receiver], [], [], remaining)[0]:
                break
            message = self.receiver.receive()
            if message is not None and accept(message):
                return message
        raise AssertionError(f"no expected notification within {timeout} s")

    def upgrade(self, sig: signal.Signals = signal.SIGUSR2) -> int:
        """Signal the main process and wait for systemd's view of the handover."""
        os.kill(self.main_pid, sig)
        message = self.wait_notify(lambda m: m.ready and m.mainpid is not None)
        assert message.mainpid is not None
        self.pids.append(message.mainpid)
        return message.mainpid

    def stop(self) -> None:
        for pid in reversed(self.pids):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(TIMEOUT)
        self.receiver.close()


def start(
    argv: list[str], env: Mapping[str, str] | None = None, stderr: IO[str] | None = None
) -> Supervised:
    receiver = NotifyReceiver()
    child_env = dict(os.environ if env is None else env, NOTIFY_SOCKET=receiver.address)
    process = subprocess.Popen(argv, env=child_env, text=True, stderr=stderr)
    supervised = Supervised(process, receiver, [process.pid])
    supervised.wait_notify(lambda m: m.ready and m.pid == process.pid)
    return supervised


def app_argv(config_path: Path, config: Mapping[str, object]) -> list[str]:
    config_path.write_text(json.dumps(config))
    return [sys.executable, str(APPS / "upgradable.py"), str(config_path)]
