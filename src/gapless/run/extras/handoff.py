"""``--handoff[=PATH]``: the manager's part of a restart by a supervisor.

The manager serves a handoff socket (gapless.sockets.handoff). At start it
first tries to take the sockets of an instance serving that path, and once its
own first generation is ready tells that instance to retire. When the
supervised process exits (gapless.run.extras.front closes the *lifeline* pipe)
the manager serves on, detached, for ``--handoff-timeout`` seconds; no taker by
then, it drains and exits. The control, handoff and health sockets travel with
the listeners, so their paths and ports never go missing; they are *lent*
while the taker starts (gapless.run.extras.handoff_host), and come back if it
fails.

Example (what the manager does)::

    handoff = Handoff(config, log, selector, driver, shutdown_delay, health, lifeline)
    taken = handoff.take_over()              # before opening the binds
    ...open listeners with taken, the control socket via handoff.control_server...
    health.open(handoff.lent("health"), serving=handoff.taking_over)
    handoff.serve(listeners, control)
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import time
from collections.abc import Sequence
from typing import Any

from ...errors import HandoffError
from ...sockets.handoff import HandoffServer, Offered
from ...sockets.listeners import stamp_unix_path
from ...sockets.takeover import Taken, take_sockets
from ..config import Listener, ManagerConfig
from ..control import ControlServer
from ..driver import Driver
from ..eventlog import EventLog
from . import EXEC_REFUSAL, Extra
from .handoff_host import HandoffHost
from .health import Health
from .shutdown_delay import ShutdownDelay

__all__ = ["Handoff"]

_LISTEN = "listen:"


class Handoff(Extra):
    """See the module docstring.

    Args:
        config: the manager's settings (``handoff_path`` None: off).
        log: the event log.
        selector: the manager's.
        driver: stopped when the next instance serves, or none came in time.
        shutdown_delay: cancelled when the next instance serves.
        health: its socket is lent and handed over too.
        lifeline: the read end of gapless.run.extras.front's pipe, else None.
    """

    def __init__(
        self,
        config: ManagerConfig,
        log: EventLog,
        selector: selectors.BaseSelector,
        driver: Driver,
        shutdown_delay: ShutdownDelay,
        health: Health,
        lifeline: int | None = None,
    ) -> None:
        self._path = config.handoff_path
        self._timeout = config.handoff_timeout
        self._log = log
        self._selector = selector
        self._driver = driver
        self._delay = shutdown_delay
        self._health = health
        self._lifeline = lifeline
        self._taken: Taken | None = None
        self._lent: dict[str, socket.socket] = {}  # control, handoff, health: taken too
        self._taken_fds: set[int] = set()
        self._host: HandoffHost | None = None
        self._listeners: Sequence[Listener] = ()
        self._control: ControlServer | None = None

    # Start --------------------------------------------------------------------

    def take_over(self) -> list[tuple[str | None, socket.socket]]:
        """The listeners of the instance serving the handoff path, if any.

        Raises:
            HandoffError: an instance serves it, but the handoff failed.
        """
        taken = None if self._path is None else take_sockets(self._path)
        if taken is None:
            return []
        self._taken = taken
        listeners: list[tuple[str | None, socket.socket]] = []
        for name, sock in taken.sockets:
            self._taken_fds.add(sock.fileno())
            if name.startswith(_LISTEN):
                listeners.append((name[len(_LISTEN) :] or None, sock))
            else:
                self._lent[name] = sock
        self._log.event(
            "handoff",
            f"took {len(listeners)} listening socket(s) from pid {taken.holder_pid} over "
            f"{self._path}; it serves until our first generation is ready",
            pid=taken.holder_pid,
        )
        return listeners

    @property
    def taking_over(self) -> bool:
        """Sockets were taken; the previous instance serves until our first generation does."""
        return self._taken is not None

    def lent(self, name: str) -> socket.socket | None:
        """The ``control``, ``handoff`` or ``health`` socket taken over, now ours."""
        return self._lent.pop(name, None)

    def control_server(self, path: str, private_directory: bool) -> ControlServer:
        """The control socket taken over with the listeners, or a new one at ``path``.

        Raises:
            ControlError: as :class:`ControlServer`.
        """
        sock = self.lent("control")
        bound = None if sock is None else os.path.abspath(sock.getsockname())
        if sock is not None and bound == os.path.abspath(path):
            return ControlServer.adopt(sock.detach(), path, None)
        if sock is not None:
            sock.close()  # the new instance was given another --control
        return ControlServer(path, private_directory=private_directory)

    def serve(self, listeners: Sequence[Listener], control: ControlServer) -> None:
        """Serve the handoff socket and watch the lifeline.

        Raises:
            HandoffError: the handoff socket could not be bound.
        """
        self._listeners = listeners
        self._control = control
        if self._path is not None:
            sock = self.lent("handoff")
            server = (
                HandoffServer(self._path) if sock is None else HandoffServer.adopt(sock, self._path)
            )
            endpoint = self._health.endpoint
            self._host = HandoffHost(
                server, self._selector, self._log, self.offered, control, endpoint, self._retire
            )
        for sock in self._lent.values():
            sock.close()  # not wanted by this instance's options
        self._lent.clear()
        if self._lifeline is not None:
            self._selector.register(self._lifeline, selectors.EVENT_READ, self._on_lifeline)

    # The loop -----------------------------------------------------------------

    def wake_at(self) -> float | None:
        return None if self._host is None else self._host.wake_at()

    def tick(self, now: float) -> None:
        """Retire the previous instance once we serve; drain if no taker came in time."""
        if self._taken is not None and self._driver.serving:
            self._finish_takeover(self._taken)
        if self._host is not None and self._host.due(now):
            self._stop(f"no instance took over within {self._timeout:g} s: draining")

    def _stop(self, why: str) -> None:
        if self._driver.running:
            self._driver.request_stop(why)

    def _on_lifeline(self) -> None:
        assert self._lifeline is not None
        self._selector.unregister(self._lifeline)
        os.close(self._lifeline)
        self._lifeline = None
        if self._host is not None and self._driver.running:
            self._host.detach(time.monotonic() + self._timeout)
            self._log.event(
                "detached",
                "the supervised process exited: serving on, detached; the next instance "
                f"has {self._timeout:g} s to take over at {self._host.path}",
            )

    def _finish_takeover(self, taken: Taken) -> None:
        """Our first generation serves: the previous instance retires, and the socket
        paths it bound are ours to remove at our final stop."""
        self._taken = None
        try:
            taken.retire()
        except HandoffError as exc:
            self._log.event("warning", f"{exc}; it drains on its own at its timeout")
        else:
            self._log.event("handoff", f"pid {taken.holder_pid} retires: it drains and exits")
        taken.close()
        for listener in self._listeners:
            if listener.sock.fileno() in self._taken_fds:
                listener.stamp = stamp_unix_path(listener.sock)
        if self._control is not None and self._control.fileno() in self._taken_fds:
            self._control.own_path(True)
        for adopted in (self._host, self._health.endpoint):
            if adopted is not None and adopted.sock.fileno() in self._taken_fds:
                adopted.own_path(True)
        self._taken_fds.clear()

    def _retire(self, taker: int) -> None:
        """The instance we passed everything to serves: drain and exit."""
        self._delay.cancel()
        self._disown()
        assert self._control is not None
        self._control.close()
        self._health.close()
        self._stop(f"pid {taker} took over: draining")

    def _disown(self) -> None:
        """Remove no socket path at exit: another instance serves on them."""
        for listener in self._listeners:
            listener.stamp = None
        if self._control is not None:
            self._control.own_path(False)
        for adopted in (self._host, self._health.endpoint):
            if adopted is not None:
                adopted.own_path(False)

    # Queries and the end --------------------------------------------------------

    def offered(self) -> list[Offered]:
        """What a handoff passes: the listeners, then the control, handoff and health sockets."""
        items: list[Offered] = [
            (_LISTEN + (item.name or ""), item.sock) for item in self._listeners
        ]
        if self._control is not None:
            items.append(("control", self._control))
        if self._host is not None:
            items.append(("handoff", self._host.server))
        if self._health.endpoint is not None:
            items.append(("health", self._health.endpoint.sock))
        return items

    def upgrade_refusal(self) -> str | None:
        return None if self._host is None else EXEC_REFUSAL

    def status(self) -> dict[str, Any]:
        host = self._host
        return {"handoff": None if host is None else host.status(time.monotonic())}

    def close(self) -> None:
        """Before the manager closes its sockets (and the health endpoint's): a taker
        still starting may keep them."""
        if self._host is not None and self._host.lending:
            self._disown()
        if self._taken is not None:
            self._taken.close()  # our start failed: the previous instance serves on
        for sock in self._lent.values():
            sock.close()
        if self._host is not None:
            self._host.close()
        if self._lifeline is not None:
            with contextlib.suppress(KeyError):
                self._selector.unregister(self._lifeline)
            os.close(self._lifeline)
            self._lifeline = None
