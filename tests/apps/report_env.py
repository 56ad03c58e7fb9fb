"""Write what this generation received (env, pid, fd 3's address) as JSON to
argv[1], then report ready and wait for the stop signal."""

import json
import os
import signal
import socket
import sys

from accepting import ready_accepting

names = ("LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID", "NOTIFY_SOCKET")
sockets = []
for fd in range(3, 3 + int(os.environ.get("LISTEN_FDS", "0"))):
    sock = socket.socket(fileno=fd)
    sockets.append(list(sock.getsockname()))
    sock.detach()
report = {"pid": os.getpid(), "env": {n: os.environ.get(n) for n in names}, "sockets": sockets}
with open(sys.argv[1] + ".tmp", "w") as file:
    json.dump(report, file)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
ready_accepting()
while True:
    signal.pause()
