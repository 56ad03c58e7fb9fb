"""For test apps that serve nothing: READY=1 plus a thread that waits in accept() on
each socket gapless passed, since ``--ready auto`` trusts READY=1 only once the
generation accepts (issue 13). A connection is closed at once."""

import os
import socket
import threading

from gapless.systemd.notify import ready


def _accept_forever(sock: socket.socket) -> None:
    while True:
        connection, _ = sock.accept()
        connection.close()


def accept_in_background(sock: socket.socket) -> None:
    """Wait in accept() on ``sock`` in a daemon thread."""
    threading.Thread(target=_accept_forever, args=(sock,), daemon=True).start()


def ready_accepting() -> None:
    """Wait in accept() on every inherited socket (fds 3...), then send READY=1."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()):
        for fd in range(3, 3 + int(os.environ.get("LISTEN_FDS", "0"))):
            accept_in_background(socket.socket(fileno=fd))
    ready()
