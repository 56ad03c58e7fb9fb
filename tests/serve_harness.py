"""Handovers the way the manager performs them, and load that counts every failure.

A :class:`Handover` holds one listening socket and a notify socket, spawns
generations with :func:`gapless.proc.spawn.spawn`, waits for each one's READY=1
(or, for servers that speak no notify protocol, for it to accept on the socket),
then SIGTERMs the previous one. ``prober.Prober`` and ``load.Wrk`` load the socket
meanwhile and report every failed request by class.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import wsproto
import wsproto.events
import wsproto.utilities
from manager_harness import Manager, _kill_leftovers, gapless_argv

from gapless.proc.spawn import Child, spawn
from gapless.run.acceptwatch import accepting, socket_inode
from gapless.sockets.addresses import parse_bind
from gapless.sockets.listeners import open_listener
from gapless.systemd.notify_receiver import Notification, NotifyReceiver

APPS = Path(__file__).parent / "apps"
TIMEOUT = 20.0


def runner_argv(app: str, *options: str) -> list[str]:
    """The gapless serve child for ``app`` (a module in tests/apps)."""
    return [sys.executable, "-m", "gapless.serving.child", app, "--no-access-log", *options]


class Handover:
    """Generations of one server on one socket, started and retired as the manager does.

    Args:
        argv: each generation's command (run in tests/apps).
        ready: ``notify`` (READY=1 on NOTIFY_SOCKET) or ``accept`` (seen in /proc).
        env: extra environment for the generations.
        backlog: the listening socket's accept queue length.
    """

    def __init__(
        self,
        argv: Sequence[str],
        ready: str = "notify",
        env: dict[str, str] | None = None,
        backlog: int = socket.SOMAXCONN,
    ):
        self.argv = list(argv)
        self.ready = ready
        self.sock = open_listener(parse_bind("127.0.0.1:0"), backlog=backlog)
        self.port: int = self.sock.getsockname()[1]
        self.receiver = NotifyReceiver()
        self.env = {**os.environ, **(env or {}), "NOTIFY_SOCKET": self.receiver.address}
        self.active: Child | None = None
        self.retired: list[Child] = []
        self.capture_stderr = False
        self.notes: list[Notification] = []

    def start(self) -> Child:
        """Spawn the next generation and wait until it is ready; it becomes active."""
        child = spawn(
            self.argv,
            listeners=[self.sock],
            env=self.env,
            cwd=str(APPS),
            new_process_group=True,
            capture_stderr=self.capture_stderr,
        )
        if self.ready == "notify":
            self._wait_notified(child)
        else:
            self._wait_accepting(child)
        previous, self.active = self.active, child
        if previous is not None:
            previous.send_signal(signal.SIGTERM)
            self.retired.append(previous)
        return child

    def _wait_notified(self, child: Child) -> None:
        self.wait_note(child, "READY")

    def wait_note(self, child: Child, key: str) -> None:
        """Wait for ``KEY=1`` from ``child`` (or find it among those already received)."""
        deadline = time.monotonic() + TIMEOUT
        while not any(note.pid == child.pid and note.fields.get(key) == "1" for note in self.notes):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"generation {child.pid} sent no {key}=1 within {TIMEOUT} s"
            readable, _, _ = select.select([self.receiver, child], [], [], remaining)
            if self.receiver in readable:
                note = self.receiver.receive()
                self.notes += [note] if note else []
            elif child in readable:
                raise AssertionError(f"generation {child.pid} {_describe(child)} before {key}=1")

    def _wait_accepting(self, child: Child) -> None:
        # The manager's fallback for servers without notify: watch /proc, 20 ms apart.
        inode = socket_inode(self.sock)
        deadline = time.monotonic() + TIMEOUT
        while not accepting(child.pid, {inode}):
            if select.select([child], [], [], 0.02)[0]:
                raise AssertionError(f"generation {child.pid} {_describe(child)} before accepting")
            assert time.monotonic() < deadline, f"generation {child.pid} never accepted"

    def handover(self, times: int) -> None:
        for _ in range(times):
            self.start()

    def wait_retired(self, timeout: float = TIMEOUT) -> list[int]:
        """Wait for every retired generation to exit; return their exit codes."""
        codes = []
        for child in self.retired:
            status = child.wait(timeout)
            assert status is not None, (
                f"retired generation {child.pid} still runs after {timeout} s"
            )
            codes.append(status.returncode)
        return codes

    def stop(self) -> None:
        """SIGTERM the active generation and wait for it; kill whatever is left."""
        if self.active is not None:
            self.active.send_signal(signal.SIGTERM)
            self.active.wait(TIMEOUT)
        for child in [*self.retired, *([self.active] if self.active else [])]:
            child.kill_group(signal.SIGKILL)
            child.wait(TIMEOUT)
            child.close()
        self.sock.close()
        self.receiver.close()

    def __enter__(self) -> Handover:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _describe(child: Child) -> str:
    status = child.poll()
    return status.describe() if status else "ended"


def self_signed(directory: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """A certificate and key for 127.0.0.1 made by openssl, and a client context trusting it."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        [*request, *subject, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key, ssl.create_default_context(cafile=str(cert))


def send_requests(port: int, count: int, path: str) -> list[socket.socket]:
    """Open ``count`` connections and send ``GET path`` on each (no reading yet)."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        socks.append(sock)
    return socks


def read_until(
    socks: Sequence[socket.socket],
    done: Callable[[bytes], bool],
    buffers: dict[socket.socket, bytes],
    timeout: float = TIMEOUT,
) -> None:
    """Read from every socket until ``done(its bytes so far)`` or EOF, in one thread."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            if not done(buffers.setdefault(sock, b"")):
                selector.register(sock, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            assert remaining > 0, (
                f"{len(selector.get_map())} responses incomplete after {timeout} s"
            )
            for key, _ in selector.select(remaining):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data = b""
                with contextlib.suppress(ConnectionResetError):
                    data = sock.recv(65536)
                buffers[sock] += data
                if not data or done(buffers[sock]):
                    selector.unregister(sock)


def head_complete(data: bytes) -> bool:
    return b"\r\n\r\n" in data


def response_complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length: *(\d+)", head)
    return bool(sep and match and len(body) >= int(match.group(1)))


@dataclass
class WebSocketClient:
    """One client WebSocket, driven by :func:`pump_websockets`."""

    sock: socket.socket
    conn: wsproto.WSConnection
    texts: list[str] = field(default_factory=list)
    close_code: int | None = None
    ended: bool = False  # the TCP connection ended (1006 if without a close frame)


def open_websockets(port: int, count: int) -> list[WebSocketClient]:
    """Open ``count`` WebSockets to ``/ws`` and wait until each got its ``hello``."""
    clients = []
    for _ in range(count):
        conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        sock.sendall(conn.send(wsproto.events.Request(host="test", target="/ws")))
        clients.append(WebSocketClient(sock, conn))
    pump_websockets(clients, lambda client: bool(client.texts))
    return clients


def pump_websockets(
    clients: Sequence[WebSocketClient], done: Callable[[WebSocketClient], bool]
) -> None:
    """Read every client until ``done(client)`` or its connection ends."""
    deadline = time.monotonic() + TIMEOUT
    with selectors.DefaultSelector() as selector:
        for client in clients:
            if not done(client) and not client.ended:
                selector.register(client.sock, selectors.EVENT_READ, client)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{len(selector.get_map())} WebSockets unfinished"
            for key, _ in selector.select(remaining):
                client = key.data
                _receive(client)
                if done(client) or client.ended:
                    selector.unregister(client.sock)


def _receive(client: WebSocketClient) -> None:
    try:
        data = client.sock.recv(65536)
    except ConnectionResetError:
        data = b""
    client.conn.receive_data(data or None)
    client.ended = not data
    for event in client.conn.events():
        if isinstance(event, wsproto.events.TextMessage):
            client.texts.append(event.data)
        elif isinstance(event, wsproto.events.CloseConnection):
            client.close_code = event.code
            with contextlib.suppress(OSError, wsproto.utilities.LocalProtocolError):
                client.sock.sendall(client.conn.send(event.response()))


@contextmanager
def serving(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, cwd: Path = APPS
) -> Iterator[Manager]:
    """``gapless serve ARGS`` on 127.0.0.1:0 in tests/apps; waits for generation 1."""
    control = str(tmp_path / "control.sock")
    argv = gapless_argv("serve", *args, "--control", control, "--no-access-log")
    if "--bind" not in args:
        argv += ["--bind", "127.0.0.1:0"]
    process = subprocess.Popen(
        argv,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )
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
            _kill_leftovers(manager)


def gapless(*args: str, cwd: Path = APPS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gapless_argv(*args), capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd
    )


def reload(manager: Manager) -> None:
    result = gapless("reload", "--control", manager.control)
    assert result.returncode == 0, result.stdout + result.stderr
