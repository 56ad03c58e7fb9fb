"""Reporting a bug in the manager without letting it reach the service.

The manager's rule (invariant 7): an exception in one handler drops only that
client or datagram; one in the loop itself re-executes the manager in place.
Either way the exception is a bug in gapless, so it is logged with its
traceback, as one event: in the text format the traceback follows the message
on the lines below it, in JSON it is the ``traceback`` field. It is not relayed
to the control clients, who did not cause it.
"""

from __future__ import annotations

import traceback

from .eventlog import EventLog

__all__ = ["report_bug"]


def report_bug(log: EventLog, where: str, exc: BaseException) -> None:
    """Log ``exc``, raised in ``where`` (e.g. "the manager's loop"), with its traceback."""
    summary = f"bug: an unexpected {type(exc).__name__} in {where}: {exc}"
    text = "".join(traceback.format_exception(exc)).rstrip()
    if log.format == "json":
        log.event("bug", summary, relay=False, traceback=text.splitlines())
    else:
        log.event("bug", f"{summary}; please report it\n{text}", relay=False)
