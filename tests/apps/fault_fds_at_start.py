"""Write the fds this process was started with, {fd: what /proc shows}, as JSON to
the file named by argv[1], before opening anything; then READY=1."""

import contextlib
import json
import os
import signal
import sys

names = os.listdir("/proc/self/fd")
fds = {}
for name in names:
    with contextlib.suppress(OSError):  # the directory listdir had open is closed
        fds[name] = os.readlink(f"/proc/self/fd/{name}")
with open(sys.argv[1] + ".tmp", "w") as file:
    json.dump({"pid": os.getpid(), "fds": fds}, file)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])

from accepting import ready_accepting  # noqa: E402  (after the fds were listed)

ready_accepting()
while True:
    signal.pause()
