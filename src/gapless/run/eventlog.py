"""The manager's log: one line per lifecycle event on stderr, as text or JSON.

Each event also goes, as a progress line, to the control clients that wait on
it (``gapless reload`` prints them as they come). A child's stderr and stdout
are forwarded line by line with a prefix naming its generation and pid (in JSON,
as objects with ``"event": "output"`` and ``"stream"``). Every JSON line has
``"ts"`` (ISO 8601, UTC, milliseconds) and ``"level"`` (info, warning or error).

Writing never blocks the manager's loop: lines go out through a non-blocking
:class:`~gapless.proc.outlet.Outlet`; what the reader does not take at once
waits in a buffer of at most 1 MiB, written out when the fd is writable again
(once :meth:`EventLog.attach` gave a selector), and lines past that bound are
dropped and counted: a ``dropped N log lines`` line takes their place.

Example::

    log = EventLog("json")
    log.event("started", "generation 2 started as pid 4242", generation=2, pid=4242)
    # {"time": 1718000000.123, "ts": "2024-06-10T06:13:20.123Z", "level": "info",
    #  "event": "started", "message": "generation 2 started as pid 4242", ...}
"""

from __future__ import annotations

import collections
import json
import os
import select
import selectors
import time
from dataclasses import dataclass
from typing import Any, Protocol

from ..proc.logstamp import LEVELS
from ..proc.logstamp import stamp as _stamp
from ..proc.outlet import Outlet

__all__ = ["LEVELS", "LOG_FORMATS", "EventLog"]

LOG_FORMATS = ("text", "json")
BUFFER_LIMIT = 1 << 20  # bytes of lines waiting for a slow reader; past it, lines drop
# Events that are not plain news; any other kind is "info" unless the caller says.
_KIND_LEVELS = {
    "warning": "warning",
    "killed": "warning",
    "dropped": "warning",
    "failed": "error",
    "bug": "error",
}


class Subscriber(Protocol):
    def send(self, message: dict[str, Any]) -> bool: ...


@dataclass
class _Gap:
    """Where lines were dropped, and how many: written as one line in their place."""

    lines: int = 1


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
        self._outlet = Outlet(fd)
        self._pid = os.getpid()
        self._subscribers: list[Subscriber] = []
        self._pending: collections.deque[bytes | _Gap] = collections.deque()
        self._pending_bytes = 0
        self._selector: selectors.BaseSelector | None = None
        self._waiting = False  # registered in the selector for writability
        self.dropped = 0  # lines dropped in all, for a status report

    def attach(self, selector: selectors.BaseSelector) -> None:
        """Write out buffered lines when the fd is writable, from ``selector``'s loop."""
        self._selector = selector
        self.flush()

    def subscribe(self, subscriber: Subscriber) -> None:
        if subscriber not in self._subscribers:
            self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)

    def event(
        self,
        kind: str,
        message: str,
        *,
        relay: bool = True,
        level: str | None = None,
        **fields: Any,
    ) -> None:
        """Log one lifecycle event and, with ``relay``, tell the subscribers; ``level``
        overrides the one its kind has (see ``_KIND_LEVELS``)."""
        self._write(self._format(kind, message, level, **fields))
        for subscriber in list(self._subscribers) if relay else ():
            if not subscriber.send({"v": 1, "progress": message, "event": kind, **fields}):
                self.unsubscribe(subscriber)

    def output(self, generation: int, pid: int, line: bytes, stream: str = "stderr") -> None:
        """Forward one line a child wrote to its ``stream`` (stderr or stdout). Its level
        is info: what a server writes to either is its ordinary log."""
        text = line.decode(errors="replace").rstrip("\r")
        if self.format == "json":
            record = {**_stamp("info"), "event": "output", "stream": stream}
            self._write(json.dumps({**record, "generation": generation, "pid": pid, "line": text}))
        else:
            self._write(f"[gen {generation} pid {pid}] {text}")

    def _format(self, kind: str, message: str, level: str | None = None, **fields: Any) -> str:
        if self.format == "json":
            stamp = _stamp(level or _KIND_LEVELS.get(kind, "info"))
            return json.dumps({**stamp, "event": kind, "message": message, **fields})
        return f"gapless[{self._pid}]: {message}"

    def _write(self, line: str) -> None:
        data = (line + "\n").encode(errors="replace")
        if self._pending_bytes + len(data) <= BUFFER_LIMIT:
            self._pending.append(data)
            self._pending_bytes += len(data)
        else:
            self.dropped += 1
            last = self._pending[-1] if self._pending else None
            if isinstance(last, _Gap):
                last.lines += 1
            else:
                self._pending.append(_Gap())
        if not self._waiting or not self._selector_open():
            self.flush()  # else the selector calls it once the reader caught up

    def flush(self) -> None:
        """Write what the reader takes now; wait for writability for the rest."""
        while self._pending:
            head = self._pending[0]
            if isinstance(head, _Gap):
                head = self._gap_line(head.lines)
                self._pending_bytes += len(head)
            try:
                sent = self._outlet.write(head)
            except OSError:  # stderr gone: the manager keeps serving all the same
                self._pending.clear()
                self._pending_bytes = 0
                break
            if sent == 0:
                self._pending[0] = head
                break
            self._pending_bytes -= sent
            if sent < len(head):
                self._pending[0] = head[sent:]
            else:
                self._pending.popleft()
        self._wait_writable(bool(self._pending))

    def _gap_line(self, lines: int) -> bytes:
        message = f"dropped {lines} log line{'s' if lines != 1 else ''}: the log was not read"
        return (self._format("dropped", message, lines=lines) + "\n").encode()

    def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the buffered lines to be written (at exit)."""
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._outlet, select.POLLOUT)
        while self._pending and (remaining := deadline - time.monotonic()) > 0:
            poller.poll(remaining * 1000)
            self.flush()

    def _selector_open(self) -> bool:
        # A closed selector (the manager is exiting) has no map.
        return self._selector is not None and self._selector.get_map() is not None

    def _wait_writable(self, wanted: bool) -> None:
        if not self._selector_open():
            self._waiting = False
            return
        if wanted is self._waiting:
            return
        assert self._selector is not None
        if wanted:
            self._selector.register(self._outlet, selectors.EVENT_WRITE, self.flush)
        else:
            self._selector.unregister(self._outlet)
        self._waiting = wanted
