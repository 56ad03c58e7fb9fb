"""Notify datagrams the manager ignores, logged at most once a second.

A datagram that is malformed, from another user, or from a process outside
every generation is dropped. Anyone able to reach the socket could send
thousands a second, so the first of a burst is logged in full and the rest of
each second only counted: one line a second with the count. None of these lines
is relayed to the control clients, whose socket buffers a flood would fill.

Example::

    dropped = DroppedDatagrams(log)
    dropped.drop(" from pid 42: not a process of any generation", time.monotonic())
    # in the loop: the timeout includes dropped.wake_at(); then dropped.tick(now)
"""

from __future__ import annotations

from .eventlog import EventLog

__all__ = ["DroppedDatagrams"]


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
