"""``--shutdown-delay S``: the first TERM or INT keeps serving S seconds with the
health endpoint saying draining, then the stop begins (a second one: at once).

Example::

    delay = ShutdownDelay(config.shutdown_delay, driver, log, upstream)
    if not delay.delay_stop(signal.SIGTERM):
        ...stop now...
    # in the loop: delay.wake_at(), delay.tick(now)
"""

from __future__ import annotations

import signal
import time
from typing import Any

from ..driver import Driver
from ..eventlog import EventLog
from ..upstream import Upstream
from . import Extra

__all__ = ["ShutdownDelay"]


class ShutdownDelay(Extra):
    """Args: ``seconds`` (0: off), the driver to stop, the event log, and what
    systemd is told (STOPPING=1 at once)."""

    def __init__(self, seconds: float, driver: Driver, log: EventLog, upstream: Upstream) -> None:
        self._seconds = seconds
        self._driver = driver
        self._log = log
        self._upstream = upstream
        self._stop_at: float | None = None  # the stop begins then

    @property
    def draining(self) -> bool:
        """A stop was asked for and waits for the delay."""
        return self._stop_at is not None

    def delay_stop(self, received: signal.Signals) -> bool:
        """On TERM or INT: True if the stop waits (the first one only); False: stop now."""
        if self._seconds <= 0 or self._stop_at is not None or not self._driver.running:
            return False
        self._stop_at = time.monotonic() + self._seconds
        self._upstream.stopping()
        self._log.event(
            "stop",
            f"stop requested by {received.name}: accepting {self._seconds:g} s more "
            "(--shutdown-delay) while the health endpoint says draining",
            signal=received.name,
        )
        return True

    def cancel(self) -> None:
        """Another reason stops the manager now (the next instance took over)."""
        self._stop_at = None

    def wake_at(self) -> float | None:
        return self._stop_at

    def tick(self, now: float) -> None:
        if self._stop_at is not None and now >= self._stop_at:
            self._stop_at = None
            if self._driver.running:
                self._driver.request_stop("the shutdown delay is over: draining")

    def status(self) -> dict[str, Any]:
        stop_at = self._stop_at
        left = None if stop_at is None else round(stop_at - time.monotonic(), 3)
        return {"shutdown_delay_left": left}
