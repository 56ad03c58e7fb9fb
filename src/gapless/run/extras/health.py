"""Health and metrics endpoint for load balancers, Kubernetes and Prometheus:
``--health-bind ADDRESS``.

On its own socket, ``GET`` (or ``HEAD``) of:

* ``/ready`` (and ``/``, which deployed probes ask) is answered ``200 serving``
  while a generation serves and the manager is not stopping, ``503 starting``
  before the first generation is ready, and ``503 draining`` once a stop was asked
  for (during ``--shutdown-delay`` the server still accepts, but the balancer is
  told to send no new work);
* ``/live`` is ``200 live`` whenever it is answered at all: the manager's loop
  answers it, so it holds during a slow start and a drain, when restarting the
  pod would only make things worse;
* ``/metrics`` is the Prometheus text (gapless.run.extras.metrics);
* any other path is ``404``.

It runs inside the manager's ``select()`` loop, non-blocking,
with no thread and no timer; it never touches the server's own sockets (a probe
through those cannot tell generations apart, nor say "draining").

It cannot take the manager down: out of fds (EMFILE), a spare fd kept for the
purpose is freed to accept the pending probe and answer it at once, so the
socket does not stay readable and the loop does not spin (as the control
socket does); an unexpected error in answering one probe drops that probe only.

:class:`Health` is the manager's feature around the endpoint: what it answers
follows the generations and the shutdown delay.

Example::

    health = HealthEndpoint(parse_bind("127.0.0.1:8081"), selector)
    health.state = "serving"
    # curl -i http://127.0.0.1:8081/ready  ->  HTTP/1.1 200 OK ... serving
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import selectors
import socket
from collections.abc import Callable, Mapping
from typing import Any

from ...sockets.addresses import Bind
from ...sockets.listeners import listener_address, open_listener, remove_unix_path, stamp_unix_path
from ..driver import Driver
from ..eventlog import EventLog
from . import Extra
from .answers import PATHS, STATES, answer
from .metrics import Metrics
from .shutdown_delay import ShutdownDelay

__all__ = ["PATHS", "STATES", "Health", "HealthEndpoint"]

_MAX_REQUEST = 8192
_MAX_CLIENTS = 64  # past this, the oldest pending probe is dropped


class HealthEndpoint:
    """The endpoint: a listening socket and its pending probes, in ``selector``.

    Args:
        bind: where to listen (TCP or unix).
        selector: the manager's selector; callables are registered as data.
        sock: an already listening socket to serve instead (one taken over from the
            previous instance); ``bind`` then only names it.
        on_error: told, in one line, of an unexpected error that dropped a probe.
        metrics: renders ``/metrics`` for the current state; None: that path is 404.

    Raises:
        ListenError: the address could not be opened.
        OSError: no fd left for the spare.
    """

    def __init__(
        self,
        bind: Bind,
        selector: selectors.BaseSelector,
        sock: socket.socket | None = None,
        on_error: Callable[[str], None] | None = None,
        metrics: Callable[[str], str] | None = None,
    ) -> None:
        self.state = "starting"
        self._metrics = metrics
        self._selector = selector
        self._on_error = on_error
        self._sock = open_listener(bind) if sock is None else sock
        self._stamp = stamp_unix_path(self._sock) if sock is None else None
        self._sock.setblocking(False)
        self._spare = os.dup(self._sock.fileno())  # see _answer_for_lack_of_fds
        self._clients: collections.OrderedDict[socket.socket, bytes] = collections.OrderedDict()
        self.address = listener_address(self._sock)
        self.accepting = False
        self.resume()

    @property
    def sock(self) -> socket.socket:
        return self._sock

    def pause(self) -> None:
        """Stop answering (another instance serves this socket for now)."""
        if self.accepting:
            self._selector.unregister(self._sock)
            self.accepting = False

    def resume(self) -> None:
        if not self.accepting:
            self._selector.register(self._sock, selectors.EVENT_READ, self._on_accept)
            self.accepting = True

    @property
    def owns_path(self) -> bool:
        return self._stamp is not None

    def own_path(self, owned: bool) -> None:
        """Whether :meth:`close` removes a unix socket path (see gapless.sockets.handoff)."""
        self._stamp = stamp_unix_path(self._sock) if owned else None

    def _on_accept(self) -> None:
        try:
            self._accept()
        except Exception as exc:  # a bug must not end the manager: probes are retried
            self._report(exc)

    def _accept(self) -> None:
        try:
            client, _ = self._sock.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._answer_for_lack_of_fds()
            return  # else transient (ENOBUFS, ENOMEM): the probe is retried
        if len(self._clients) >= _MAX_CLIENTS:
            self._drop(next(iter(self._clients)))
        self._clients[client] = b""
        try:
            client.setblocking(False)
            self._selector.register(client, selectors.EVENT_READ, lambda: self._on_request(client))
        except Exception as exc:  # an fd the selector refuses: this probe only is lost
            self._failed(client, exc)

    def _answer_for_lack_of_fds(self) -> None:
        """Out of fds, a pending probe would keep the socket readable and the loop
        spinning: free the spare fd to accept it, answer what it sent so far (the
        request is one small packet), and take the fd back."""
        os.close(self._spare)
        try:
            with contextlib.suppress(OSError):
                client, _ = self._sock.accept()
                with client:
                    client.setblocking(False)
                    request = b""
                    with contextlib.suppress(OSError):
                        request = client.recv(_MAX_REQUEST)
                    client.send(self.response(request))
        finally:
            self._spare = os.dup(self._sock.fileno())

    def _on_request(self, client: socket.socket) -> None:
        try:
            self._read(client)
        except Exception as exc:  # a bug answering one probe must not end the manager
            self._failed(client, exc)

    def _read(self, client: socket.socket) -> None:
        try:
            data = client.recv(_MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        request = self._clients[client] + data
        self._clients[client] = request
        if b"\r\n\r\n" in request or b"\n\n" in request or len(request) >= _MAX_REQUEST:
            with contextlib.suppress(OSError):
                client.send(self.response(request))
            self._drop(client)

    def _failed(self, client: socket.socket, exc: Exception) -> None:
        self._drop(client)
        self._report(exc)

    def _report(self, exc: Exception) -> None:
        if self._on_error is not None:
            self._on_error(f"health endpoint dropped a probe: {type(exc).__name__}: {exc}")

    def response(self, request: bytes) -> bytes:
        """The whole HTTP/1.1 answer to ``request`` in the current state (see .answers)."""
        return answer(request, self.state, self._metrics)

    def _drop(self, client: socket.socket) -> None:
        self._clients.pop(client, None)
        # Unregistered before it is closed: a later fd of the same number must be free.
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(client)
        client.close()

    def close(self) -> None:
        """Close every probe and the socket (removing a unix path it owns)."""
        for client in list(self._clients):
            self._drop(client)
        self.pause()
        if self._sock.fileno() != -1:
            self._sock.close()
            os.close(self._spare)
            remove_unix_path(self._stamp)


class Health(Extra):
    """``--health-bind``: the endpoint (None while off or closed) and its state.

    Args:
        bind: where to listen; None: off.
        selector: the manager's.
        log: the event log.
        driver: serving or stopping: what the endpoint says.
        shutdown_delay: while it runs, the endpoint says draining.
        metrics: what ``/metrics`` shows; None: that path is 404.
    """

    def __init__(
        self,
        bind: Bind | None,
        selector: selectors.BaseSelector,
        log: EventLog,
        driver: Driver,
        shutdown_delay: ShutdownDelay,
        metrics: Metrics | None = None,
    ) -> None:
        self._bind = bind
        self._metrics = metrics
        self._selector = selector
        self._log = log
        self._driver = driver
        self._delay = shutdown_delay
        self.endpoint: HealthEndpoint | None = None

    def open(self, sock: socket.socket | None, serving: bool) -> None:
        """Open the endpoint, on ``sock`` if one was taken over; ``serving``: the
        previous instance serves meanwhile.

        Raises:
            ListenError: the endpoint could not be opened.
        """
        if self._bind is None:
            if sock is not None:
                sock.close()  # not wanted by this instance's options
            return
        on_error = lambda message: self._log.event("warning", message)  # noqa: E731
        render = None if self._metrics is None else self._metrics.exposition
        self.endpoint = HealthEndpoint(self._bind, self._selector, sock, on_error, render)
        if serving:
            self.endpoint.state = "serving"
        where = self.endpoint.address
        self._log.event("health", f"health endpoint on {where}", address=str(where))

    def tick(self, now: float) -> None:
        """Keep the answer current (the shutdown delay and the handoff tick first)."""
        if self.endpoint is None:
            return
        if not self._driver.running or self._delay.draining:
            self.endpoint.state = "draining"
        elif self._driver.serving:
            self.endpoint.state = "serving"

    def status(self) -> dict[str, Any]:
        return {"health": None if self.endpoint is None else self.endpoint.state}

    def export(self) -> dict[str, Any] | None:
        """What an exec in place carries over (gapless.run.reexec): the socket's fd,
        whether its unix path is ours to remove, the counters; None: off."""
        if self.endpoint is None:
            return None
        metrics = None if self._metrics is None else self._metrics.export()
        return {
            "fd": self.endpoint.sock.fileno(),
            "owned": self.endpoint.owns_path,
            "metrics": metrics,
        }

    def adopt(self, state: Mapping[str, Any] | None) -> None:
        """After an exec in place: serve the socket ``state`` (from :meth:`export`)
        names, never closed meanwhile, so no probe was refused.

        Raises:
            ListenError: there was none (``--health-bind`` came with the exec) and
                the address could not be opened.
        """
        self.open(None if state is None else socket.socket(fileno=int(state["fd"])), False)
        if state is not None and self.endpoint is not None:
            self.endpoint.own_path(bool(state["owned"]))

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None
