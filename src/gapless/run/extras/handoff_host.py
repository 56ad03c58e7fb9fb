"""The running manager's side of a handoff, in its ``select()`` loop.

:class:`HandoffHost` accepts one taker at a time on the handoff socket
(gapless.sockets.handoff). On ``take`` it passes every socket and *lends* the ones only
one process should answer on (the control, handoff and health sockets): it
stops accepting on them, while its generations go on accepting on the
listeners. On ``retire`` it hands them on for good and asks the manager to
drain. A taker that leaves without ``retire`` (its generation failed) gets
nothing more: the lent sockets are answered here again, as if it never came.

After the supervised process exited (:meth:`HandoffHost.detach`) the host
holds on until a deadline; :meth:`HandoffHost.due` says when it passed with no
taker at work.

Example::

    host = HandoffHost(server, selector, log, offered, control, health, on_retire)
    host.detach(time.monotonic() + 10)      # the supervised process is gone
    if host.due(time.monotonic()): ...      # nobody took over: drain and exit
"""

from __future__ import annotations

import selectors
import socket
from collections.abc import Callable
from typing import Any

from ...errors import HandoffError
from ...sockets.handoff import HandoffServer, HandoffSession, Offered
from ..control import ControlServer
from ..eventlog import EventLog
from .health import HealthEndpoint

__all__ = ["HandoffHost"]


class HandoffHost:
    """Serves the handoff socket; see the module docstring.

    Args:
        server: the listening handoff socket.
        selector: the manager's.
        log: the event log.
        offered: what a taker gets, as ``(name, socket)``.
        control: the manager's control socket, lent to a taker.
        health: the health endpoint, lent too, if any.
        on_retire: called with the taker's pid once it serves.
    """

    def __init__(
        self,
        server: HandoffServer,
        selector: selectors.BaseSelector,
        log: EventLog,
        offered: Callable[[], list[Offered]],
        control: ControlServer,
        health: HealthEndpoint | None,
        on_retire: Callable[[int], None],
    ) -> None:
        self.server = server
        self.path = server.path
        self._selector = selector
        self._log = log
        self._offered = offered
        self._control = control
        self._health = health
        self._on_retire = on_retire
        self._session: HandoffSession | None = None
        self._control_data: Any = None  # its selector callback while lent
        self._hold_until: float | None = None
        selector.register(server, selectors.EVENT_READ, self._on_accept)

    def detach(self, until: float) -> None:
        """The supervised process is gone: drain at ``until`` unless taken over."""
        self._hold_until = until

    def wake_at(self) -> float | None:
        return self._hold_until if self._session is None else None

    def due(self, now: float) -> bool:
        """True once, when the hold is over and no taker is at work."""
        if self._session is None and self._hold_until is not None and now >= self._hold_until:
            self._hold_until = None
            return True
        return False

    @property
    def sock(self) -> socket.socket:
        return self.server.sock

    def own_path(self, owned: bool) -> None:
        self.server.own_path(owned)

    @property
    def lending(self) -> bool:
        """A taker has the sockets and is starting: they may be its for good soon."""
        return self._session is not None and self._session.sent

    def status(self, now: float) -> dict[str, Any]:
        hold = self._hold_until
        return {
            "path": self.path,
            "detached": hold is not None,
            "hold_left": None if hold is None else round(max(0.0, hold - now), 3),
            "taker": None if self._session is None else self._session.pid,
        }

    def _on_accept(self) -> None:
        session = self.server.accept()
        if session is None:
            return
        if self._session is not None:
            self._log.event(
                "warning",
                f"refused pid {session.pid} on {self.path}: pid {self._session.pid} takes over",
            )
            session.close()
            return
        self._session = session
        self._selector.register(session, selectors.EVENT_READ, self._on_request)

    def _on_request(self) -> None:
        session = self._session
        assert session is not None
        try:
            request = session.receive()
        except HandoffError as exc:
            self._log.event("warning", f"handoff to pid {session.pid}: {exc}")
            self._end(session)
            return
        if request == "":
            return
        if request == "take" and not session.sent:
            self._give(session)
        elif request == "retire" and session.sent:
            self._retire(session)
        else:
            self._end(session)

    def _give(self, session: HandoffSession) -> None:
        items = self._offered()
        try:
            session.send_sockets(items)
        except HandoffError as exc:
            self._log.event("warning", str(exc))
            self._end(session)
            return
        self._lend()
        self._log.event(
            "handoff",
            f"passed {len(items)} socket(s) to pid {session.pid} over {self.path}; "
            "serving on until its generation is ready",
            pid=session.pid,
        )

    def _retire(self, session: HandoffSession) -> None:
        session.acknowledge_retire()
        self._close_session(session)
        self._hold_until = None
        self.server.own_path(False)
        self.server.close()
        self._on_retire(session.pid)

    def _end(self, session: HandoffSession) -> None:
        """The taker left (or broke the protocol) before it served: take back the lent."""
        self._close_session(session)
        if session.sent:
            self._take_back()
            self._log.event(
                "handoff", f"pid {session.pid} left before taking over; serving on as before"
            )

    def _close_session(self, session: HandoffSession) -> None:
        self._selector.unregister(session)
        session.close()
        self._session = None

    def _lend(self) -> None:
        self._control_data = self._selector.get_key(self._control).data
        self._selector.unregister(self._control)
        self._selector.unregister(self.server)
        if self._health is not None:
            self._health.pause()

    def _take_back(self) -> None:
        self._selector.register(self._control, selectors.EVENT_READ, self._control_data)
        self._selector.register(self.server, selectors.EVENT_READ, self._on_accept)
        if self._health is not None:
            self._health.resume()

    def close(self) -> None:
        """At the manager's exit: end a session, close the socket (its path is
        removed if this instance owns it)."""
        if self._session is not None:
            self._close_session(self._session)
        if self.server.fileno() != -1:
            if self.server.fileno() in self._selector.get_map():
                self._selector.unregister(self.server)
            self.server.close()
