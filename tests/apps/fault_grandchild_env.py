"""Take the sockets as a gapless program does (consume_listen_fds), then start a
grandchild with every inheritable fd (close_fds=False) that reports its LISTEN_*
variables and open fds as JSON to the file named by argv[1]; then READY=1."""

import json
import os
import signal
import subprocess
import sys

from accepting import accept_in_background

from gapless.systemd.listen_fds import consume_listen_fds
from gapless.systemd.notify import ready

REPORT = """
import json, os
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink("/proc/self/fd/" + fd)
    except OSError:
        pass  # the directory listdir had open
env = {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")}
print(json.dumps({"pid": os.getpid(), "env": env, "fds": fds}))
"""

sockets = consume_listen_fds()
result = subprocess.run(
    [sys.executable, "-c", REPORT], close_fds=False, capture_output=True, text=True, check=True
)
report = {"child": {"pid": os.getpid(), "sockets": [s.fileno() for _, s in sockets]}}
report["grandchild"] = json.loads(result.stdout)
with open(sys.argv[1] + ".tmp", "w") as file:
    json.dump(report, file)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
for _, sock in sockets:
    accept_in_background(sock)
ready()
while True:
    signal.pause()
