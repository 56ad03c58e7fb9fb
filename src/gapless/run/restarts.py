"""Restarts the manager does not drive: by a supervisor, systemd or an orchestrator.

:class:`Restarts` is the manager's part of four features, each off by default:

* ``--handoff[=PATH]``: the manager serves a handoff socket (gapless.sockets.handoff).
  At start it first tries to take the sockets of an instance serving that path,
  and once its own first generation is ready tells that instance to retire.
  When the supervised process exits (gapless.run.front closes the *lifeline* pipe)
  the manager serves on, detached, for ``--handoff-timeout`` seconds; no
  taker by then, it drains and exits. The control, handoff and health sockets
  travel with the listeners, so their paths and ports never go missing; they
  are *lent* while the taker starts, and come back if it fails.
* systemd's fd store: the listeners are stored (gapless.systemd.fdstore) when ``$FDSTORE``
  allows it, so even ``systemctl restart`` keeps them.
* ``--shutdown-delay S``: the first TERM or INT keeps serving S seconds with the
  health endpoint saying draining, then the stop begins (a second one: at once).
* ``--health-bind ADDRESS``: the readiness endpoint (gapless.run.health).

Example (what the manager does)::

    restarts = Restarts(config, environ, log, selector, upstream, lifeline=None)
    taken = restarts.take_over()              # before opening the binds
    ...open listeners with taken, the control socket via restarts.control_server...
    restarts.open(driver, listeners, control)
    # in the loop: restarts.wake_at(), restarts.tick(now), restarts.delay_stop(sig)
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import time
from collections.abc import Sequence
from typing import Any

from ..errors import HandoffError, NotifyError
from ..sockets.handoff import HandoffServer, Offered
from ..sockets.listeners import stamp_unix_path
from ..sockets.takeover import Taken, take_sockets
from ..systemd.fdstore import fd_store_size, given_back_names, store_listeners
from .config import Listener, ManagerConfig
from .control import ControlServer
from .driver import Driver
from .eventlog import EventLog
from .handoff_host import HandoffHost
from .health import HealthEndpoint
from .upstream import Upstream

__all__ = ["Restarts"]

_LISTEN = "listen:"


class Restarts:
    """See the module docstring.

    Args:
        config: the manager's settings.
        environ: the children's environment; ``FDSTORE`` is taken out of it.
        log: the event log.
        selector: the manager's.
        upstream: what systemd is told; its address is systemd's NOTIFY_SOCKET.
        lifeline: the read end of gapless.run.front's pipe (``--handoff``), else None.
    """

    def __init__(
        self,
        config: ManagerConfig,
        environ: dict[str, str],
        log: EventLog,
        selector: selectors.BaseSelector,
        upstream: Upstream,
        lifeline: int | None = None,
    ) -> None:
        self.config = config
        self._log = log
        self._selector = selector
        self._upstream = upstream
        self._lifeline = lifeline
        store = {"FDSTORE": environ.pop("FDSTORE", ""), "NOTIFY_SOCKET": upstream.address}
        self._fd_store = fd_store_size(store) > 0
        self._given_back = given_back_names(environ, os.getpid())
        self._taken: Taken | None = None
        self._lent: dict[str, socket.socket] = {}  # control, handoff, health: taken too
        self._taken_fds: set[int] = set()
        self._host: HandoffHost | None = None
        self._health: HealthEndpoint | None = None
        self._driver: Driver | None = None
        self._stop_at: float | None = None  # --shutdown-delay: the stop begins then

    # Start --------------------------------------------------------------------

    def take_over(self) -> list[tuple[str | None, socket.socket]]:
        """With ``--handoff``: the listeners of the instance serving the handoff path.

        Raises:
            HandoffError: an instance serves it, but the handoff failed.
        """
        path = self.config.handoff_path
        taken = None if path is None else take_sockets(path)
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
            f"took {len(listeners)} listening socket(s) from pid {taken.holder_pid} over {path}; "
            "it serves until our first generation is ready",
            pid=taken.holder_pid,
        )
        return listeners

    def control_server(self, path: str, private_directory: bool) -> ControlServer:
        """The control socket taken over with the listeners, or a new one at ``path``.

        Raises:
            ControlError: as :class:`ControlServer`.
        """
        sock = self._lent.pop("control", None)
        bound = None if sock is None else os.path.abspath(sock.getsockname())
        if sock is not None and bound == os.path.abspath(path):
            return ControlServer.adopt(sock.detach(), path, None)
        if sock is not None:
            sock.close()  # the new instance was given another --control
        return ControlServer(path, private_directory=private_directory)

    def open(self, driver: Driver, listeners: Sequence[Listener], control: ControlServer) -> None:
        """Serve the handoff socket, the health endpoint and the lifeline; store the
        listeners with systemd.

        Raises:
            HandoffError: the handoff socket could not be bound.
            ListenError: the health endpoint could not be opened.
        """
        self._driver = driver
        health_sock = self._lent.pop("health", None)
        if self.config.health_bind is not None:
            self._health = HealthEndpoint(
                self.config.health_bind,
                self._selector,
                health_sock,
                on_error=lambda message: self._log.event("warning", message),
            )
            if self._taken is not None:
                self._health.state = "serving"  # the previous instance serves meanwhile
            where = self._health.address
            self._log.event("health", f"health endpoint on {where}", address=str(where))
        if self.config.handoff_path is not None:
            server_sock = self._lent.pop("handoff", None)
            path = self.config.handoff_path
            server = (
                HandoffServer(path)
                if server_sock is None
                else HandoffServer.adopt(server_sock, path)
            )
            self._host = HandoffHost(
                server, self._selector, self._log, self.offered, control, self._health, self._retire
            )
        for sock in self._lent.values():
            sock.close()  # not wanted by this instance's options
        self._lent.clear()
        if self._lifeline is not None:
            self._selector.register(self._lifeline, selectors.EVENT_READ, self._on_lifeline)
        if self._fd_store:
            self._store(listeners)
        self._listeners = listeners
        self._control = control

    def _store(self, listeners: Sequence[Listener]) -> None:
        named = [(item.name, item.sock) for item in listeners]
        try:
            store_listeners(named, self._upstream.address, self._given_back)
        except NotifyError as exc:
            self._log.event("warning", f"cannot keep the sockets in systemd's fd store: {exc}")
            return
        self._log.event("fdstore", f"kept {len(named)} listening socket(s) in systemd's fd store")

    # The loop -----------------------------------------------------------------

    def wake_at(self) -> float | None:
        times = [self._stop_at, self._host.wake_at() if self._host else None]
        return min((when for when in times if when is not None), default=None)

    def tick(self, now: float) -> None:
        """Carry out what is due: retire the previous instance, begin a delayed or
        detached stop; keep the health endpoint's answer current."""
        driver = self._driver
        if driver is None:
            return
        if self._taken is not None and driver.serving:
            self._finish_takeover(self._taken)
        if self._stop_at is not None and now >= self._stop_at:
            self._stop_at = None
            self._stop("the shutdown delay is over: draining")
        if self._host is not None and self._host.due(now):
            self._stop(f"no instance took over within {self.config.handoff_timeout:g} s: draining")
        if self._health is not None:
            if not driver.running or self._stop_at is not None:
                self._health.state = "draining"
            elif driver.serving or self._taken is not None:
                self._health.state = "serving"

    def delay_stop(self, received: signal.Signals) -> bool:
        """On TERM or INT: True if the stop waits for ``--shutdown-delay`` (the
        first one only); False: stop now."""
        delay = self.config.shutdown_delay
        driver = self._driver
        if delay <= 0 or self._stop_at is not None or driver is None:
            return False
        if not driver.running:
            return False
        self._stop_at = time.monotonic() + delay
        self._upstream.stopping()
        self._log.event(
            "stop",
            f"stop requested by {received.name}: accepting {delay:g} s more "
            "(--shutdown-delay) while the health endpoint says draining",
            signal=received.name,
        )
        return True

    def _stop(self, why: str) -> None:
        assert self._driver is not None
        if self._driver.running:
            self._driver.request_stop(why)

    # Handoff --------------------------------------------------------------------

    def _on_lifeline(self) -> None:
        assert self._lifeline is not None
        self._selector.unregister(self._lifeline)
        os.close(self._lifeline)
        self._lifeline = None
        assert self._driver is not None
        if self._host is not None and self._driver.running:
            self._host.detach(time.monotonic() + self.config.handoff_timeout)
            self._log.event(
                "detached",
                "the supervised process exited: serving on, detached; the next instance "
                f"has {self.config.handoff_timeout:g} s to take over at {self._host.path}",
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
        if self._control.fileno() in self._taken_fds:
            self._control.own_path(True)
        for adopted in (self._host, self._health):
            if adopted is not None and adopted.sock.fileno() in self._taken_fds:
                adopted.own_path(True)
        self._taken_fds.clear()

    def _retire(self, taker: int) -> None:
        """The instance we passed everything to serves: drain and exit."""
        self._stop_at = None
        self._disown()
        self._control.close()
        if self._health is not None:
            self._health.close()
            self._health = None
        self._stop(f"pid {taker} took over: draining")

    def _disown(self) -> None:
        """Remove no socket path at exit: another instance serves on them."""
        for listener in self._listeners:
            listener.stamp = None
        self._control.own_path(False)
        for adopted in (self._host, self._health):
            if adopted is not None:
                adopted.own_path(False)

    # Queries and the end --------------------------------------------------------

    def offered(self) -> list[Offered]:
        """What a handoff passes: the listeners, then the control, handoff and health sockets."""
        items: list[Offered] = [
            (_LISTEN + (item.name or ""), item.sock) for item in self._listeners
        ]
        items.append(("control", self._control))
        if self._host is not None:
            items.append(("handoff", self._host.server))
        if self._health is not None:
            items.append(("health", self._health.sock))
        return items

    def upgrade_refusal(self) -> str | None:
        """Why ``gapless upgrade`` (an exec in place) cannot keep these sockets, or None."""
        if self._host is not None or self._health is not None:
            return (
                "--handoff and --health-bind sockets are not kept across an exec; "
                "restart through the supervisor instead (--handoff keeps every socket)"
            )
        return None

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "handoff": None if self._host is None else self._host.status(now),
            "health": None if self._health is None else self._health.state,
            "shutdown_delay_left": None if self._stop_at is None else round(self._stop_at - now, 3),
        }

    def close(self) -> None:
        """Before the manager closes its sockets: a taker still starting may keep them."""
        if self._host is not None and self._host.lending:
            self._disown()
        if self._taken is not None:
            self._taken.close()  # our start failed: the previous instance serves on
        for sock in self._lent.values():
            sock.close()
        if self._host is not None:
            self._host.close()
        if self._health is not None:
            self._health.close()
        if self._lifeline is not None:
            with contextlib.suppress(KeyError):
                self._selector.unregister(self._lifeline)
            os.close(self._lifeline)
            self._lifeline = None
