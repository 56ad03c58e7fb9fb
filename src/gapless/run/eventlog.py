"""The manager's log: one line per lifecycle event on stderr, as text or JSON.

Each event also goes, as a progress line, to the control clients that wait on
it (``gapless reload`` prints them as they come). A child's stderr is forwarded
line by line with a prefix naming its generation and pid.

Example::

    log = EventLog("json")
    log.event("started", "generation 2 started as pid 4242", generation=2, pid=4242)
    # {"time": 1718000000.123, "event": "started", "message": "generation 2 ...", ...}
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Protocol

__all__ = ["LOG_FORMATS", "EventLog"]

LOG_FORMATS = ("text", "json")


class Subscriber(Protocol):
    def send(self, message: dict[str, Any]) -> bool: ...


class EventLog:
    """Writes events to ``fd`` and copies them to subscribers.

    Args:
        format: ``"text"`` (``gapless[PID]: message``) or ``"json"`` (one object a line).
        fd: where to write, stderr by default.
    """

    def __init__(self, format: str = "text", fd: int = 2) -> None:
        if format not in LOG_FORMATS:
            raise ValueError(f"unknown log format {format!r}; use text or json")
        self.format = format
        self._fd = fd
        self._pid = os.getpid()
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        if subscriber not in self._subscribers:
            self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)

    def event(self, kind: str, message: str, *, relay: bool = True, **fields: Any) -> None:
        """Log one lifecycle event and, with ``relay``, tell the subscribers."""
        if self.format == "json":
            record = {"time": round(time.time(), 3), "event": kind, "message": message, **fields}
            self._write(json.dumps(record))
        else:
            self._write(f"gapless[{self._pid}]: {message}")
        for subscriber in list(self._subscribers) if relay else ():
            if not subscriber.send({"v": 1, "progress": message, "event": kind, **fields}):
                self.unsubscribe(subscriber)

    def output(self, generation: int, pid: int, line: bytes) -> None:
        """Forward one line a child wrote to its stderr."""
        text = line.decode(errors="replace").rstrip("\r")
        if self.format == "json":
            record = {"time": round(time.time(), 3), "event": "output", "generation": generation}
            self._write(json.dumps({**record, "pid": pid, "line": text}))
        else:
            self._write(f"[gen {generation} pid {pid}] {text}")

    def _write(self, line: str) -> None:
        data = (line + "\n").encode(errors="replace")
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            pass  # stderr gone: the manager keeps serving all the same
