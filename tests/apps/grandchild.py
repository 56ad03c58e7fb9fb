"""A server that forks a worker which ignores SIGTERM and stays in its process
group; the worker's pid goes to the file named by argv[1]. The leader reports
ready and dies of the stop signal, leaving the worker behind."""

import os
import signal
import sys

from accepting import ready_accepting

pid = os.fork()
if pid == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        signal.pause()
with open(sys.argv[1] + ".tmp", "w") as file:
    file.write(str(pid))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
ready_accepting()
while True:
    signal.pause()
