"""The signals of a ``select()`` loop: caught for the length of a ``with`` block,
queued by handlers that do nothing else, and a socket the loop watches that
becomes readable when one arrives.

A handler must not do the loop's work (see :mod:`gapless.proc.signals`), and a
handler alone does not make ``select()`` return (PEP 475 resumes the wait).
Python's ``signal.set_wakeup_fd`` writes a byte to a socket at each signal, so
the loop wakes; the signals themselves are read from a queue, in order, none
lost when several arrive before the loop runs. On exit the previous handlers
and the previous wakeup fd are put back.

Example::

    with SignalWakeup((signal.SIGHUP, signal.SIGTERM)) as signals:
        selector.register(signals, selectors.EVENT_READ)
        ...
        for received in signals.take():   # after select() said it is readable
            ...
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Iterable
from queue import SimpleQueue
from types import TracebackType

from .signals import SignalCapture

__all__ = ["SignalWakeup"]


class SignalWakeup:
    """Catch ``signals`` while in the ``with`` block; see the module docstring.

    Must be entered in the main thread (as any signal handler is installed).
    """

    def __init__(self, signals: Iterable[signal.Signals]) -> None:
        self.signals = tuple(signals)
        self._queue: SimpleQueue[signal.Signals] = SimpleQueue()
        self._stack = contextlib.ExitStack()
        self._read: socket.socket | None = None
        self._pair: tuple[socket.socket, ...] = ()

    def __enter__(self) -> SignalWakeup:
        with contextlib.ExitStack() as stack:
            read, write = self._pair = socket.socketpair()
            for sock in (read, write):
                sock.setblocking(False)
                stack.callback(sock.close)
            previous = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
            stack.callback(signal.set_wakeup_fd, previous)
            stack.enter_context(SignalCapture({sig: self._queue.put for sig in self.signals}))
            self._stack = stack.pop_all()
        self._read = read
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._read = None
        self._stack.close()

    def close_in_forked_child(self) -> None:
        """In a child forked inside the ``with`` block: close the sockets, which are
        the parent's. The child's signal handlers and wakeup fd are its own to reset."""
        for sock in self._pair:
            sock.close()
        self._read = None

    def fileno(self) -> int:
        """The socket a selector watches: readable once a signal arrived."""
        if self._read is None:
            raise ValueError("SignalWakeup used outside its with block")
        return self._read.fileno()

    def take(self) -> list[signal.Signals]:
        """The signals received since the last call, oldest first; clears the wakeup."""
        if self._read is not None:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while self._read.recv(4096):
                    pass
        received = []
        while not self._queue.empty():
            received.append(self._queue.get())
        return received
