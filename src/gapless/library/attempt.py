"""One upgrade under way: a thread that starts the successor and reports how it went.

The :class:`~gapless.library.upgrader.Upgrader` gives an :class:`Attempt` two
callbacks, both run on the attempt's thread: ``start(cancel)`` runs the
``before_upgrade`` hooks and starts the successor (raising if it fails), and
``settle(attempt, outcome)`` feeds the outcome to the lifecycle under the upgrader's lock,
returning True if the successor took over. Only one attempt runs at a time.
"""

from __future__ import annotations

import concurrent.futures
import logging
import signal
import threading
from collections.abc import Callable

from ..errors import UpgradeRefusedError
from ..proc.spawn import Child
from .successor import Cancel

__all__ = ["Attempt"]

log = logging.getLogger("gapless")

# How long close() waits for a cancelled successor to be killed and reaped: it
# is SIGKILLed, so this bounds only a machine too loaded to schedule it.
CANCEL_WAIT = 30.0


class Attempt:
    """An upgrade's thread, its cancellation and its result (the successor's PID)."""

    def __init__(
        self,
        cancel: Cancel,
        start: Callable[[Cancel], Child],
        settle: Callable[[Attempt, Child | BaseException], bool],
    ) -> None:
        self.cancel = cancel
        self.future: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._start, self._settle = start, settle
        self._thread = threading.Thread(target=self._run, name="gapless-upgrade", daemon=True)

    def begin(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return not self.future.done()

    def wait_cancelled(self) -> None:
        """After ``cancel.set()``: wait until a successor that was started is killed
        and reaped. One never started (the cancel came first) is not waited for, nor
        is an attempt that was not cancelled, nor anything when called from this
        attempt's own thread (a hook)."""
        if not (self.cancel.is_set() and self.cancel.entered):
            return
        if self._thread is threading.current_thread():
            return
        done, _ = concurrent.futures.wait([self.future], timeout=CANCEL_WAIT)
        if not done:
            log.warning("the cancelled upgrade did not end within %g s", CANCEL_WAIT)

    def _run(self) -> None:
        outcome: Child | BaseException
        try:
            outcome = self._start(self.cancel)
        except BaseException as exc:
            outcome = exc
        took_over = False
        try:
            took_over = self._settle(self, outcome)
        finally:
            self.cancel.close()  # the settle closed it under the lock: this is a fallback
            self._finish(outcome, took_over)

    def _finish(self, outcome: Child | BaseException, took_over: bool) -> None:
        if isinstance(outcome, BaseException):
            self.future.set_exception(outcome)
        elif took_over:
            self.future.set_result(outcome.pid)
        else:
            # A stop raced the successor's READY=1: this process stops, and so must
            # the successor, or two generations would be left serving.
            outcome.kill_group(signal.SIGKILL)
            outcome.wait(5.0)
            outcome.close()
            self.future.set_exception(UpgradeRefusedError("cannot upgrade: stopping"))
