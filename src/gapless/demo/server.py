"""The demo server: ``python -m gapless.demo [--bind ADDR]...``.

An HTTP server on the standard library that upgrades itself on HUP or USR2
through :class:`gapless.Upgrader`. ``GET /?duration=3s`` answers after that long;
every body names the PID that served it. Start it, begin a slow request, send
``kill -USR2 <pid>``: new requests are answered by the successor while the slow
one completes on the old process, which exits once it is done.
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from ..errors import GaplessError
from ..library.upgrader import Upgrader
from ..sockets.addresses import Bind, parse_bind
from ..sockets.listeners import listener_address
from ..systemd.listen_fds import read_listen_fds

MAX_DURATION = 3600.0


class DemoHandler(BaseHTTPRequestHandler):
    server_version = "gapless-demo"

    def do_GET(self) -> None:
        try:
            duration = parse_duration(parse_qs(urlsplit(self.path).query).get("duration", ["0"])[0])
        except ValueError as exc:
            self._reply(400, f"{exc}\n")()
            return
        # The headers go out at once, the body after the work: a client can tell
        # that its slow request is being served before it completes.
        send_body = self._reply(200, f"pid {os.getpid()} slept {duration:g}s\n")
        time.sleep(duration)  # the request's own work, not synchronisation
        send_body()

    def _reply(self, status: int, body: str) -> Callable[[], None]:
        """Send the status and headers now; return what sends the body."""
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()

        def send_body() -> None:
            self.wfile.write(data)

        return send_body

    def log_message(self, format: str, *args: object) -> None:
        pass


class DemoServer(ThreadingHTTPServer):
    # Join request threads on close: the old process leaves only when done.
    daemon_threads = False
    block_on_close = True

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock.getsockname(), DemoHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock


def parse_duration(text: str) -> float:
    """``"3s"``, ``"250ms"``, ``"1.5"`` -> seconds."""
    scale = 0.001 if text.endswith("ms") else 1.0
    number = text.removesuffix("ms").removesuffix("s")
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"invalid duration {text!r}: use e.g. 3s or 250ms") from None
    if not 0 <= value <= MAX_DURATION:
        raise ValueError(f"invalid duration {text!r}: must be 0 to {MAX_DURATION:g} s")
    return value


class AcceptLoop:
    """Accepts on every server until :meth:`stop` returns; then accepts no more.

    ``stop`` is synchronous, so an upgrader hook that calls it knows the old
    process accepts nothing once the hook returns.
    """

    def __init__(self, servers: Sequence[DemoServer]) -> None:
        self.servers = servers
        self._wake_read, self._wake_write = os.pipe()
        self._stopped = threading.Event()

    def run(self) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._wake_read, selectors.EVENT_READ)
                for server in self.servers:
                    # Non-blocking: the successor may take a connection we were told of.
                    server.socket.setblocking(False)
                    selector.register(server.socket, selectors.EVENT_READ, server)
                while True:
                    ready = selector.select()
                    if any(key.fd == self._wake_read for key, _ in ready):
                        return
                    for key, _ in ready:
                        key.data.handle_request()
        finally:
            self._stopped.set()

    def stop(self, timeout: float = 10.0) -> None:
        os.write(self._wake_write, b"x")
        self._stopped.wait(timeout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gapless.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="ADDR",
        help="repeatable; default: the sockets inherited through LISTEN_FDS (gapless run, "
        "systemd), else 127.0.0.1:8000",
    )
    parser.add_argument("--pid-file", help="written once ready, naming the process to signal")
    parser.add_argument("--quiet", action="store_true", help="print only warnings and errors")
    parser.add_argument(
        "--drain-timeout", type=float, default=30.0, help="drain deadline in seconds; -1: none"
    )
    # The former name, as Upgrader(hammer_time=) was: still taken, no longer shown.
    parser.add_argument("--hammer-time", type=float, dest="drain_timeout", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format=f"demo[{os.getpid()}] %(message)s",
    )
    try:
        binds = [parse_bind(text) for text in args.bind] or inherited_binds()
        binds = binds or [parse_bind("127.0.0.1:8000")]
        return run(
            binds, pid_file=args.pid_file, drain_timeout=args.drain_timeout, quiet=args.quiet
        )
    except GaplessError as exc:
        print(f"gapless.demo.server: error: {exc}", file=sys.stderr)
        return 1


def inherited_binds() -> list[Bind]:
    """A bind for each socket handed to this process (LISTEN_FDS), at its actual address.

    Under ``gapless run`` without ``--bind`` the demo must serve on what the manager
    passed, as gunicorn does: binding 127.0.0.1:8000 itself would leave the
    manager's port unanswered and make the next generation fail with "in use".
    """
    binds = []
    for item in read_listen_fds(os.environ, os.getpid()):
        sock = socket.socket(fileno=item.fd)
        try:
            binds.append(Bind(listener_address(sock), item.name))
        finally:
            sock.detach()  # the Upgrader takes the fd itself, by this address
    return binds


def run(binds: Sequence[Bind], *, pid_file: str | None, drain_timeout: float, quiet: bool) -> int:
    with Upgrader(pid_file=pid_file, drain_timeout=drain_timeout) as upgrader:
        servers = [DemoServer(upgrader.listen(bind)) for bind in binds]
        loop = AcceptLoop(servers)
        upgrader.hooks.before_shutdown.append(loop.stop)
        addresses = ", ".join(f"http://{listener_address(s.socket)}" for s in servers)
        if not quiet:
            print(f"Serving {addresses} with pid {os.getpid()}", flush=True)
        upgrader.ready()
        loop.run()
        for server in servers:
            server.server_close()  # close the listener, then wait for requests in flight
    return 0


if __name__ == "__main__":
    sys.exit(main())
