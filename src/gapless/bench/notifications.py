"""Reading a ``NOTIFY_SOCKET`` the way a supervisor does: wait for one notification,
or keep draining it so that the sender never blocks on a full queue.

Example::

    ready = wait_notification(receiver, lambda n: n.ready, timeout=30, tail=lambda: [])
    reader = DiscardingReader(receiver)   # later: reader.close()
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable

from ..errors import BenchError, NotifyError
from ..systemd.notify_receiver import Notification, NotifyReceiver

__all__ = ["DiscardingReader", "wait_notification"]


class DiscardingReader:
    """Reads and drops a receiver's datagrams in a thread, until :meth:`close`."""

    def __init__(self, receiver: NotifyReceiver) -> None:
        self._receiver = receiver
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._run, daemon=True, name="notify-reader")
        self._thread.start()

    def _run(self) -> None:
        while (
            self._wake_read
            not in select.select([self._receiver.fileno(), self._wake_read], [], [])[0]
        ):
            with contextlib.suppress(NotifyError):
                self._receiver.receive()

    def close(self) -> None:
        """Stop the thread, then close the receiver."""
        os.write(self._wake_write, b"x")
        self._thread.join()
        os.close(self._wake_read)
        os.close(self._wake_write)
        self._receiver.close()


def wait_notification(
    receiver: NotifyReceiver,
    wanted: Callable[[Notification], bool],
    timeout: float,
    tail: Callable[[], list[str]],
) -> Notification:
    """Read notifications until one is ``wanted``; return it.

    Raises:
        BenchError: none came within ``timeout`` seconds (``tail()`` tells why).
    """
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([receiver], [], [], remaining)[0]:
            break
        notification = receiver.receive()
        if notification is not None and wanted(notification):
            return notification
    raise BenchError(f"the server did not report ready within {timeout:g} s; its output: {tail()}")
