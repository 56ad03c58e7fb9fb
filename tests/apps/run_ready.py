"""The smallest notify child: READY=1 at once, then wait; SIGTERM ends it.
bench/run_figures.py subtracts its cold start from a reload's time."""

import signal

from gapless.systemd.notify import ready

ready()
while True:
    signal.pause()
