"""A plain HTTP server on the socket it inherits as fd 3 (``LISTEN_FDS``), for tests
of ``gapless run``: what a shell child ``exec``s after ``systemd-notify --ready``.

``GET`` answers ``pid <PID>``. ``POST`` first writes ``holding a request`` to
stderr, then reads its body and answers: a client that sends the headers alone
holds a request open for as long as it likes. SIGTERM stops accepting and waits
for every request in progress before exiting (a correct drain).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._reply(f"pid {os.getpid()}\n".encode())

    def do_POST(self) -> None:
        print("holding a request", file=sys.stderr, flush=True)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._reply(b"got " + body + b"\n")

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() waits for the requests in progress


def main() -> None:
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        sys.exit("run_fd_http.py: expects one socket from LISTEN_FDS and LISTEN_PID")
    server = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=3)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown).start()  # shutdown() waits for the loop

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
