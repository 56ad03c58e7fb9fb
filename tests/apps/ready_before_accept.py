"""Like gunicorn's arbiter: READY=1 first, accept only later, once the test opens
the FIFO named by argv[1] for writing. SIGTERM ends it."""

import socket
import sys

from gapless.systemd.notify import ready

ready()
with open(sys.argv[1]) as go:  # blocks until the test opens the FIFO
    go.read()
listener = socket.socket(fileno=3)
while True:
    connection, _ = listener.accept()
    connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    connection.close()
