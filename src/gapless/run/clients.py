"""The control socket's clients: one owner for their selector registrations.

Every way a client ends (it hung up, sent a line too long, was too slow to take
an answer, sat idle, was evicted, or its command raised) goes through
:meth:`ControlConnection.close`, whose callback here unregisters it from the
selector and unsubscribes it from the event log *before* its fd is closed. A
closed fd that stayed registered would make the next connection that gets the
same fd number fail ``selector.register`` and take the manager down.

A client that has not sent a complete request within ``idle_timeout`` seconds
(of connecting, or of its last request) is dropped with one error line; one
waiting for the answer to a reload, a stop or an upgrade is not idle. At most
``limit`` clients are held: one more evicts the client idle the longest, or is
refused with one error line when every client waits for an answer.

An exception raised by a command's handler is a bug: it is logged with its
traceback, and only that client is answered with an error and dropped.

Example::

    clients = Clients(selector, log, table)
    selector.register(server, selectors.EVENT_READ, lambda: clients.accept(server))
    # in the loop: the timeout includes clients.wake_at(); then clients.tick(now)
"""

from __future__ import annotations

import functools
import json
import math
import selectors
import time
from collections.abc import Collection

from .bugs import report_bug
from .control import CommandTable, ControlConnection, ControlServer, error
from .eventlog import EventLog

__all__ = ["IDLE_TIMEOUT", "MAX_CLIENTS", "Clients"]

IDLE_TIMEOUT = 10.0
MAX_CLIENTS = 128


class Clients:
    """The accepted control connections; see the module docstring.

    Args:
        selector: the manager's; each client is registered with a callable as data.
        log: the event log clients may be subscribed to.
        table: the commands the clients' requests run.
        limit: the most clients held at once.
        idle_timeout: seconds a client has to send a complete request.
    """

    def __init__(
        self,
        selector: selectors.BaseSelector,
        log: EventLog,
        table: CommandTable,
        *,
        limit: int = MAX_CLIENTS,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._selector = selector
        self._log = log
        self._table = table
        self._limit = limit
        self._idle_timeout = idle_timeout
        # Each client's idle deadline (monotonic); None while it waits for an answer.
        self._deadlines: dict[ControlConnection, float | None] = {}

    def __len__(self) -> int:
        return len(self._deadlines)

    def accept(self, server: ControlServer) -> None:
        """Accept one client from ``server``, if one is pending and there is room."""
        connection = server.accept()
        if connection is None:
            return
        if len(self._deadlines) >= self._limit and not self._evict_idle():
            connection.send(
                error(
                    f"too many control connections ({self._limit}), all waiting for an "
                    "answer; retry later"
                )
            )
            connection.close()
            return
        connection.on_close(self._forget)
        self._deadlines[connection] = time.monotonic() + self._idle_timeout
        on_readable = functools.partial(self._on_readable, connection)
        self._selector.register(connection, selectors.EVENT_READ, on_readable)

    def _evict_idle(self) -> bool:
        # None: answered since the last wake_at(), so active just now: evicted last.
        idle = {
            client: math.inf if deadline is None else deadline
            for client, deadline in self._deadlines.items()
            if not client.waiting
        }
        if not idle:
            return False
        oldest = min(idle, key=idle.__getitem__)
        message = f"too many control connections ({self._limit}): closing this idle one; reconnect"
        oldest.send(error(message))
        oldest.close()
        return True

    def _on_readable(self, connection: ControlConnection) -> None:
        lines = connection.read_lines()
        if lines is None:
            connection.close()
            return
        if lines:
            self._deadlines[connection] = time.monotonic() + self._idle_timeout
        for line in lines:
            if connection.closed:
                return
            self._dispatch(connection, line)

    def _dispatch(self, connection: ControlConnection, line: bytes) -> None:
        try:
            self._table.dispatch(connection, line)
        except Exception as exc:  # a bug in a command: this client alone pays for it
            report_bug(self._log, f"the control request {line[:80]!r}", exc)
            what = _command_name(line)
            connection.send(
                error(
                    f"internal error in {what!r}: {type(exc).__name__}: {exc}; the manager "
                    "serves on and closed this connection; please report this bug"
                )
            )
            connection.close()

    def _forget(self, connection: ControlConnection) -> None:
        """The one way out, called by ``connection.close()`` while its fd is valid."""
        if connection in self._deadlines:
            del self._deadlines[connection]
            self._selector.unregister(connection)
        self._log.unsubscribe(connection)

    # Time ---------------------------------------------------------------------

    def wake_at(self) -> float | None:
        """When the next idle client is due to be dropped; None: no idle client."""
        now = time.monotonic()
        for connection, deadline in self._deadlines.items():
            if connection.waiting:
                self._deadlines[connection] = None
            elif deadline is None:  # answered: idle again from now on
                self._deadlines[connection] = now + self._idle_timeout
        return min((d for d in self._deadlines.values() if d is not None), default=None)

    def tick(self, now: float) -> None:
        """Drop the clients idle past their deadline."""
        late = [
            connection
            for connection, deadline in self._deadlines.items()
            if deadline is not None and deadline <= now and not connection.waiting
        ]
        for connection in late:
            connection.send(
                error(
                    f"no complete request within {self._idle_timeout:g} s; "
                    "send one JSON object a line"
                )
            )
            connection.close()

    def close(self, keep: Collection[ControlConnection] = ()) -> None:
        """Close every client but those in ``keep``, which are only unregistered
        (the manager answers them once it has closed everything else)."""
        for connection in list(self._deadlines):
            if connection in keep:
                self._forget(connection)
            else:
                connection.close()


def _command_name(line: bytes) -> str:
    """The "cmd" of a request that parsed once already, for the error answer."""
    try:
        return str(json.loads(line)["cmd"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return "the request"
