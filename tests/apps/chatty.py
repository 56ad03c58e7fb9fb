"""A server that writes argv[1] lines of 100 bytes on stderr, then reports ready."""

import signal
import sys

from accepting import ready_accepting

line = "x" * 99 + "\n"
for _ in range(int(sys.argv[1])):
    sys.stderr.write(line)
sys.stderr.flush()
ready_accepting()
while True:
    signal.pause()
