"""A server that writes to stdout as well as stderr: one stdout line in two writes
with a stderr line between them, then READY=1 (accepting, as --ready auto wants);
``stdout got SIGUSR1`` on SIGUSR1.
SIGTERM keeps its default action, so a drain ends it by that signal."""

import signal
import sys

from accepting import ready_accepting


def say(signum: int, frame: object) -> None:
    print(f"stdout got {signal.Signals(signum).name}", flush=True)


signal.signal(signal.SIGUSR1, say)
sys.stdout.write("first half, ")
sys.stdout.flush()
print("on stderr", file=sys.stderr, flush=True)
print("second half", flush=True)
ready_accepting()
while True:
    signal.pause()
