"""A server that holds every connection it accepts (writing b"+" once it has it),
reports ready, and ignores SIGTERM: only the kill at the drain deadline ends it,
with the connections it holds."""

import os
import signal
import socket
import threading

from gapless.systemd.notify import ready

held: list[socket.socket] = []


def _hold(sock: socket.socket) -> None:
    while True:
        connection, _ = sock.accept()
        held.append(connection)
        connection.sendall(b"+")


signal.signal(signal.SIGTERM, signal.SIG_IGN)
for fd in range(3, 3 + int(os.environ.get("LISTEN_FDS", "0"))):
    threading.Thread(target=_hold, args=(socket.socket(fileno=fd),), daemon=True).start()
ready()
while True:
    signal.pause()
