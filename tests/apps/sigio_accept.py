"""A server /proc never shows waiting on its socket: it sleeps in sigwait() for the
SIGIO that O_ASYNC raises when a connection arrives, then accepts without blocking
and holds every connection it accepted (as a server under load does)."""

import fcntl
import os
import signal
import socket

sock = socket.socket(fileno=3)
sock.setblocking(False)
fcntl.fcntl(3, fcntl.F_SETOWN, os.getpid())
fcntl.fcntl(3, fcntl.F_SETFL, fcntl.fcntl(3, fcntl.F_GETFL) | os.O_ASYNC)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGIO})
held = []
while True:  # what arrived before O_ASYNC was set raised no SIGIO: accept first
    while True:
        try:
            held.append(sock.accept()[0])
        except BlockingIOError:
            break
    signal.sigwait({signal.SIGIO})
