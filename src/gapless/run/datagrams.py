"""Reading the manager's notify socket: bounded, contained, and quiet about strangers.

:class:`Datagrams` reads at most 64 datagrams per wakeup, so that a flood cannot
starve the loop, and hands each to a router (the Driver's), which says
whether it was wanted. A datagram whose handling raises (a bug) is dropped
alone, with its traceback logged (invariant 7).

A datagram that is malformed, from another user, or from a process outside
every generation is dropped. Anyone able to reach the socket could send
thousands a second, so the first of a burst is logged in full and the rest of
each second only counted: one line a second with the count. None of these lines
is relayed to the control clients, whose socket buffers a flood would fill.

Example::

    datagrams = Datagrams(log, faults, route)   # route(note) -> None, or why it is dropped
    selector.register(receiver, selectors.EVENT_READ, lambda: datagrams.read(receiver))
    # in the loop: the timeout includes datagrams.wake_at(); then datagrams.tick(now)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from ..errors import NotifyError
from ..systemd.notify_receiver import Notification, NotifyReceiver
from .bugs import report_bug
from .eventlog import EventLog
from .faults import Faults

__all__ = ["Datagrams", "DroppedDatagrams"]

_BATCH = 64


class Datagrams:
    """Reads and routes notify datagrams; see the module docstring.

    Args:
        log: the event log.
        faults: the test-only fault injection (``"notify"``).
        route: handles one datagram from a sender of the manager's user; returns
            None, or why it is dropped (after "ignored a notify datagram").
    """

    def __init__(
        self, log: EventLog, faults: Faults, route: Callable[[Notification], str | None]
    ) -> None:
        self._log = log
        self._faults = faults
        self._route = route
        self.dropped = DroppedDatagrams(log)

    def read(self, receiver: NotifyReceiver) -> None:
        """Handle the pending datagrams, a bounded batch of them."""
        for _ in range(_BATCH):
            try:
                if not self._one(receiver):
                    return
            except Exception as exc:
                report_bug(self._log, "a notify datagram's handler", exc)

    def _one(self, receiver: NotifyReceiver) -> bool:
        """Handle one pending datagram; False if there was none."""
        try:
            note = receiver.receive()
        except NotifyError as exc:
            self.dropped.drop(f": {exc}", time.monotonic())
            return True
        if note is None:
            return False
        self._faults.check("notify")
        why = None
        if note.uid not in (0, os.getuid()):  # before anything about it is logged
            why = f" from uid {note.uid} (pid {note.pid}): not the manager's user"
        why = why or self._route(note)
        if why is not None:
            self.dropped.drop(why, time.monotonic())
        return True

    def wake_at(self) -> float | None:
        return self.dropped.wake_at()

    def tick(self, now: float) -> None:
        self.dropped.tick(now)


class DroppedDatagrams:
    """Counts and logs dropped datagrams; see the module docstring.

    Args:
        log: where the lines go (never relayed to subscribers).
        interval: seconds between two lines.
    """

    def __init__(self, log: EventLog, interval: float = 1.0) -> None:
        self._log = log
        self._interval = interval
        self._window_end: float | None = None  # until then, drops are only counted
        self._count = 0
        self._last = ""

    def drop(self, detail: str, now: float) -> None:
        """One datagram dropped; ``detail`` follows "ignored a notify datagram"."""
        if self._window_end is not None and now < self._window_end:
            self._count += 1
            self._last = detail
            return
        self._window_end = now + self._interval
        self._log.event("warning", f"ignored a notify datagram{detail}", relay=False)

    def wake_at(self) -> float | None:
        """When the count of the current second is due; None if nothing is counted."""
        return self._window_end if self._count else None

    def tick(self, now: float) -> None:
        if not self._count or self._window_end is None or now < self._window_end:
            return
        count, self._count = self._count, 0
        plural = "s" if count > 1 else ""
        self._log.event(
            "warning",
            f"ignored {count} more notify datagram{plural} in the last {self._interval:g} s "
            f"(the last{self._last})",
            relay=False,
            count=count,
        )
        self._window_end = now + self._interval  # a steady flood: one line a second
