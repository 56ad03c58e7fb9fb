"""A prefork server in miniature: the leader forks a worker that accepts on the
inherited socket (fd 3) and answers ``pid N``, then reports ready. The leader
dies of SIGTERM without stopping its worker, as a careless server would. With
``--worker-ignores-term`` the worker ignores SIGTERM too: only SIGKILL ends it."""

import os
import signal
import socket
import sys

from gapless.systemd.notify import ready

listener = socket.socket(fileno=3)
worker = os.fork()
if worker == 0:
    if "--worker-ignores-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        client, _ = listener.accept()
        with client:
            client.recv(65536)
            body = f"pid {os.getpid()}\n".encode()
            head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            client.sendall(head + body)
listener.close()
print(f"worker pid {worker}", file=sys.stderr, flush=True)
ready()
while True:
    signal.pause()
