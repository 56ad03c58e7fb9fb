"""A server that reports ready, then ignores SIGTERM: only SIGKILL ends it."""

import signal

from gapless.systemd.notify import ready

signal.signal(signal.SIGTERM, signal.SIG_IGN)
ready()
while True:
    signal.pause()
