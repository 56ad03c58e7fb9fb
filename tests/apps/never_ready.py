"""A server that never reports ready and never accepts."""

import signal

while True:
    signal.pause()
