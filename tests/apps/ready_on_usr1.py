"""A generation that gets ready only when told: it waits for SIGUSR1 (saying so on
stderr first), then execs the command in argv[1:] with the same pid."""

import os
import signal
import sys

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
print("waiting for SIGUSR1", file=sys.stderr, flush=True)
signal.sigwait({signal.SIGUSR1})
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
os.execv(sys.argv[1], sys.argv[1:])
