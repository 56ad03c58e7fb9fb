"""The smallest notify child: READY=1 at once, then wait; SIGTERM ends it.
bench/run_figures.py subtracts its cold start from a reload's time."""

import signal

from accepting import ready_accepting

ready_accepting()
while True:
    signal.pause()
