"""HAProxy in front of the fleet: its generated config, the process, its runtime API.

The config health-checks each host's ``--health-bind`` endpoint (``GET /ready``) every
``inter``; one failed check (``fall 1``, a 503 ``draining`` is one) takes a host out,
two good ones (``rise 2``) put it back. The runtime API (a unix socket, ``level
admin``) is how this script watches states (``show stat``) and how operators drain
by hand (``set server be/host1 state drain|maint|ready``).

Waiting for a state polls ``show stat`` every few milliseconds until a deadline that
fails loudly: HAProxy has no push notification of a state change.

Example::

    config = HaproxyConfig(frontend, [Backend("host1", web, health)], socket_path)
    proxy = Haproxy(config, directory)
    proxy.start(timeout=10)
    proxy.wait_status("host1", "UP", timeout=10)
    proxy.stop()
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gapless.bench.processes import OutputPump
from gapless.errors import BenchError
from gapless.proc.spawn import Child, spawn
from gapless.sockets.addresses import TcpAddress

__all__ = ["Backend", "Haproxy", "HaproxyConfig", "haproxy_path", "render_config"]

_POLL = 0.02  # seconds between two ``show stat`` while waiting for a state
BACKEND = "be"


@dataclass(frozen=True)
class Backend:
    """One host: its name in HAProxy, where it serves, where its health endpoint is."""

    name: str
    web: TcpAddress
    health: TcpAddress


@dataclass(frozen=True)
class HaproxyConfig:
    frontend: TcpAddress
    backends: tuple[Backend, ...]
    runtime_socket: str
    inter_ms: int = 200
    fall: int = 1
    rise: int = 2
    redispatch: bool = False  # option redispatch + retry-on (L7 retries)


def render_config(config: HaproxyConfig) -> str:
    """The whole haproxy.cfg; docs/fleet.md explains it line by line."""
    retries = (
        ["    option redispatch 1", "    retry-on conn-failure empty-response response-timeout"]
        if config.redispatch
        else []
    )
    servers = [
        f"    server {b.name} {b.web} check addr {b.health.host} port {b.health.port}"
        for b in config.backends
    ]
    return "\n".join(
        [
            "global",
            f"    stats socket {config.runtime_socket} mode 600 level admin",
            "    maxconn 4096",
            "",
            "defaults",
            "    mode http",
            "    timeout connect 2s",
            "    timeout client 30s",
            "    timeout server 30s",
            "    timeout http-keep-alive 10s",
            "    timeout check 1s",
            "",
            "frontend fe",
            f"    bind {config.frontend}",
            f"    default_backend {BACKEND}",
            "",
            f"backend {BACKEND}",
            "    balance roundrobin",
            "    option httpchk GET /ready",
            "    http-reuse safe",
            "    retries 3",
            *retries,
            f"    default-server inter {config.inter_ms}ms fall {config.fall} rise {config.rise}",
            *servers,
            "",
        ]
    )


def haproxy_path() -> str | None:
    """Where haproxy is, or None (``apt-get install haproxy``)."""
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None
    )


class Haproxy:
    """``haproxy -f DIR/haproxy.cfg -db`` (foreground), a child of ours in a process
    group of its own; killed with us (PDEATHSIG) if we die first."""

    def __init__(self, config: HaproxyConfig, directory: str) -> None:
        self.config = config
        self.path = str(Path(directory) / "haproxy.cfg")
        Path(self.path).write_text(render_config(config))
        self._child: Child | None = None
        self._pump: OutputPump | None = None
        self._pacer = threading.Event()  # never set: paces the polls

    def start(self, timeout: float) -> None:
        """Start it and wait until its runtime API answers.

        Raises:
            BenchError: haproxy is missing, refuses the config, or does not answer.
        """
        binary = haproxy_path()
        if binary is None:
            raise BenchError("haproxy is not installed: apt-get install haproxy")
        self._child = spawn(
            [binary, "-f", self.path, "-db"],
            new_process_group=True,
            capture_stderr=True,
            death_signal=signal.SIGKILL,
        )
        assert self._child.stderr_fd is not None
        self._pump = OutputPump(self._child.stderr_fd)
        self._child.stderr_fd = None  # the pump closes it
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                self.command("show info")
                return
            if self._child.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"haproxy did not start: {self.tail()}")
            self._pacer.wait(_POLL)

    def tail(self) -> list[str]:
        return self._pump.tail(10) if self._pump is not None else []

    def command(self, line: str) -> str:
        """Send one runtime API command; return HAProxy's whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect(self.config.runtime_socket)
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` for the backend's servers and the backend itself, by name."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(text.splitlines())
        return {row["svname"]: row for row in rows if row["pxname"] == BACKEND}

    def status(self, server: str) -> str:
        """UP, DOWN, NOLB (draining), MAINT... with any ``x/y`` transition count cut."""
        return self.stats()[server]["status"].split(" ")[0]

    def wait_until(self, server: str, wanted: str, field: str, timeout: float) -> float:
        """Poll until ``server``'s ``field`` reads ``wanted``; return when it did.

        Raises:
            BenchError: it did not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            row = self.stats()[server]
            value = row[field].split(" ")[0]
            if value == wanted:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"haproxy: {server} {field} is {row[field]!r}, not {wanted!r},"
                    f" after {timeout:g} s (last check: {row.get('check_status')})"
                )
            self._pacer.wait(_POLL)

    def wait_status(self, server: str, wanted: str, timeout: float) -> float:
        return self.wait_until(server, wanted, "status", timeout)

    def set_state(self, server: str, state: str) -> None:
        """``set server be/SERVER state ready|drain|maint``.

        Raises:
            BenchError: HAProxy answered with an error.
        """
        answer = self.command(f"set server {BACKEND}/{server} state {state}").strip()
        if answer:
            raise BenchError(f"haproxy refused 'state {state}' for {server}: {answer}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it (SIGTERM to its group, SIGKILL if it lingers) and reap it."""
        if self._child is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._child.pid, signal.SIGTERM)
        if self._child.wait(timeout) is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._child.pid, signal.SIGKILL)
            self._child.wait(timeout)
        self._child.close()
        self._child = None
        if self._pump is not None:
            self._pump.close()
