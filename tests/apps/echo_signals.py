"""A server that reports ready and says on stderr which signals it received."""

import signal
import sys

from accepting import ready_accepting


def say(signum: int, frame: object) -> None:
    print(f"got {signal.Signals(signum).name}", file=sys.stderr, flush=True)


signal.signal(signal.SIGUSR1, say)
signal.signal(signal.SIGUSR2, say)
ready_accepting()
while True:
    signal.pause()
