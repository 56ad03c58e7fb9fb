"""A server that reports ready, then ignores SIGTERM: only SIGKILL ends it."""

import signal

from accepting import ready_accepting

signal.signal(signal.SIGTERM, signal.SIG_IGN)
ready_accepting()
while True:
    signal.pause()
