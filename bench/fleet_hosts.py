"""One host of the fleet: a gapless manager (``gapless serve`` or ``gapless run --
gunicorn``) on its own loopback address, with its health endpoint beside it.

A host is started and waited for on events only: the manager's ``READY=1`` on a
``NOTIFY_SOCKET`` of ours (as systemd reads it), its exit on a pidfd. What it runs
is a :class:`HostSpec`; each :meth:`Host.start` is a new instance (a new manager
process) serving the version written to its version file first.

Example::

    host = Host(HostSpec("host1", web, health, "serve", shutdown_delay=1.0), directory)
    host.start(version=1, timeout=30)
    host.reload(version=2, timeout=30)     # gapless reload: same manager, new generation
    host.terminate(); host.wait_exited(timeout=15)
    host.start(version=3, timeout=30)      # a replacement: a new manager
    host.kill()
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapless.bench.notifications import DiscardingReader, wait_notification
from gapless.bench.processes import OutputPump, ProcessTree, wait_exited
from gapless.errors import BenchError, GaplessError
from gapless.proc.spawn import Child, spawn
from gapless.run.control import call
from gapless.sockets.addresses import TcpAddress
from gapless.systemd.notify_receiver import NotifyReceiver

__all__ = ["SERVERS", "Host", "HostSpec", "free_port"]

BENCH = str(Path(__file__).resolve().parent)  # where fleet_app.py is
SERVERS = ("serve", "gunicorn")


@dataclass(frozen=True)
class HostSpec:
    name: str
    web: TcpAddress
    health: TcpAddress
    server: str = "serve"  # or "gunicorn": gapless run -- gunicorn
    shutdown_delay: float = 0.0
    drain_timeout: float = 10.0


def free_port(hosts: list[str], avoid: Collection[int] = ()) -> int:
    """A TCP port free on every address in ``hosts`` (the first picks it), not
    one of ``avoid`` (ports picked already but not bound yet).

    Raises:
        BenchError: no port was free on all of them in 20 tries.
    """
    for _ in range(20):
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(socket.socket())
            first.bind((hosts[0], 0))
            port = int(first.getsockname()[1])
            if port in avoid:
                continue
            try:
                for host in hosts[1:]:
                    stack.enter_context(socket.socket()).bind((host, port))
            except OSError:
                continue
            return port
    raise BenchError(f"no TCP port free on all of {', '.join(hosts)}")


def _argv(spec: HostSpec, control: str) -> list[str]:
    common = [
        "--control", control, "--health-bind", str(spec.health),
        "--shutdown-delay", f"{spec.shutdown_delay:g}",
        "--drain-timeout", f"{spec.drain_timeout:g}",
    ]  # fmt: skip
    gapless = [sys.executable, "-m", "gapless.cli"]
    if spec.server == "serve":
        return [
            *gapless, "serve", "--bind", str(spec.web), *common,
            "--no-access-log", "--log-level", "warning", "fleet_app:asgi",
        ]  # fmt: skip
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    return [
        *gapless, "run", "--bind", f"web={spec.web}", *common, "--",
        gunicorn, "--worker-class", "gthread", "--threads", "8", "--workers", "1",
        "--keep-alive", "5", "--log-level", "warning", "fleet_app:wsgi",
    ]  # fmt: skip


class Host:
    """A host's current instance (None between a stop and the next start)."""

    def __init__(self, spec: HostSpec, directory: str) -> None:
        self.spec = spec
        self.control = os.path.join(directory, f"{spec.name}.control.sock")
        self.version_file = os.path.join(directory, f"{spec.name}.version")
        self.version = 0
        self.manager: Child | None = None
        self._tree: ProcessTree | None = None
        self._pump: OutputPump | None = None
        self._reader: DiscardingReader | None = None
        self._receiver: NotifyReceiver | None = None  # until READY=1

    def start(self, version: int, timeout: float) -> float:
        """Start a new instance serving ``version``; return when it reported ready.

        Raises:
            BenchError: it did not report READY=1 within ``timeout``.
        """
        self.launch(version)
        return self.wait_ready(timeout)

    def launch(self, version: int) -> None:
        """Start a new instance serving ``version``, without waiting for it."""
        self._write_version(version)
        self._receiver = NotifyReceiver()
        env = {
            **os.environ,
            "NOTIFY_SOCKET": self._receiver.address,
            "FLEET_VERSION_FILE": self.version_file,
            "PYTHONPATH": os.pathsep.join([BENCH, os.environ.get("PYTHONPATH", "")]),
        }
        self.manager = spawn(
            _argv(self.spec, self.control),
            env=env,
            new_process_group=True,
            capture_stderr=True,
            death_signal=signal.SIGKILL,
        )
        assert self.manager.stderr_fd is not None
        self._pump = OutputPump(self.manager.stderr_fd)
        self.manager.stderr_fd = None  # the pump closes it

    def wait_ready(self, timeout: float) -> float:
        """Wait for the launched instance's READY=1; return when it came.

        Raises:
            BenchError: it did not come within ``timeout``.
        """
        assert self.manager is not None and self._receiver is not None
        receiver, pid = self._receiver, self.manager.pid
        self._receiver = None
        try:
            wait_notification(receiver, lambda n: n.ready and n.pid == pid, timeout, self.tail)
        except BaseException:
            receiver.close()
            raise
        self._reader = DiscardingReader(receiver)  # unread, the manager would block
        self._tree = ProcessTree(pid)  # its generation and workers, to kill at the end
        return time.monotonic()

    def _write_version(self, version: int) -> None:
        Path(self.version_file).write_text(f"{version}\n")
        self.version = version

    def tail(self) -> list[str]:
        return self._pump.tail(8) if self._pump is not None else []

    def reload(self, version: int, timeout: float) -> tuple[float, float]:
        """``gapless reload`` to ``version``; return when the new generation served
        and when the old one had exited.

        Raises:
            BenchError: the reload failed or the old generation did not exit in time.
        """
        self._write_version(version)
        old = self.active_pid(timeout)
        answer = self._call("reload", timeout)
        if not answer.get("ok"):
            raise BenchError(f"{self.spec.name}: reload failed: {answer.get('error')}")
        ready = time.monotonic()
        exited = wait_exited([old], timeout, f"{self.spec.name}'s old generation")
        self._forget_tree()
        self._tree = ProcessTree(self.manager.pid) if self.manager else None
        return ready, exited

    def active_pid(self, timeout: float) -> int:
        status = self._call("status", timeout)
        active = [g["pid"] for g in status.get("generations", []) if g["state"] == "active"]
        if not active:
            raise BenchError(f"{self.spec.name} reports no active generation: {status}")
        return int(active[0])

    def _call(self, command: str, timeout: float) -> dict[str, Any]:
        try:
            return call(self.control, command, timeout=timeout)
        except GaplessError as exc:
            raise BenchError(f"{self.spec.name}: gapless {command}: {exc}; {self.tail()}") from None

    def terminate(self) -> None:
        """SIGTERM to the manager, as a kubelet or Nomad sends it."""
        if self.manager is not None:
            self.manager.send_signal(signal.SIGTERM)

    def wait_exited(self, timeout: float) -> float:
        """Wait for the manager's exit (its pidfd); reap it; return when it exited.

        Raises:
            BenchError: it still runs after ``timeout`` (it is killed then).
        """
        assert self.manager is not None
        if self.manager.wait(timeout) is None:
            tail = self.tail()
            self.kill()
            raise BenchError(f"{self.spec.name} still ran {timeout:g} s after TERM: {tail}")
        exited = time.monotonic()
        self._release()
        return exited

    def stop(self, timeout: float) -> None:
        """Stop the instance as an orchestrator does (TERM, then its shutdown delay and
        drain), killing what is left after ``timeout``."""
        if self.manager is None:
            return
        self.terminate()
        with contextlib.suppress(BenchError):  # killed then: at the end that is all we want
            self.wait_exited(timeout)

    def kill(self) -> None:
        """SIGKILL whatever is left of the instance and reap the manager."""
        if self.manager is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.manager.pid, signal.SIGKILL)
            self.manager.send_signal(signal.SIGKILL)
            self.manager.wait(10.0)
        if self._tree is not None:
            self._tree.kill()
        self._release()

    def _forget_tree(self) -> None:
        """Close the pidfds on the processes as they were (without signalling any:
        the manager is among them)."""
        if self._tree is not None:
            for fd in self._tree.fds:
                os.close(fd)
            self._tree = None

    def _release(self) -> None:
        if self._tree is not None:
            self._tree.kill()  # generations the manager left, if any
            self._tree = None
        if self.manager is not None:
            self.manager.close()
            self.manager = None
        if self._reader is not None:
            self._reader.close()  # and its receiver
            self._reader = None
        if self._receiver is not None:
            self._receiver.close()
            self._receiver = None
        if self._pump is not None:
            self._pump.close(1.0)
            self._pump = None
