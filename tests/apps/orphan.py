"""A server that double-forks a short-lived process, which becomes an orphan:
the manager, as subreaper, must reap it. Its pid is printed on stderr."""

import os
import signal
import sys

from accepting import ready_accepting

middle = os.fork()
if middle == 0:
    orphan = os.fork()
    if orphan == 0:
        os.setsid()  # out of the generation's group, so only the reaper sees it
        os._exit(7)
    print(f"orphan pid {orphan}", file=sys.stderr, flush=True)
    os._exit(0)
os.waitpid(middle, 0)
ready_accepting()
while True:
    signal.pause()
