"""uvicorn's HTTP protocols with the drain's rules for idle connections.

uvicorn closes an idle keep-alive connection when its keep-alive time runs out,
without looking whether the client has just sent a request; and on shutdown it
closes every idle connection at once. The protocols here close an idle
connection only at keep-alive expiry, also during a drain, and only when its
receive queue is empty: a request that arrived unseen is read and answered. A
connection accepted but never written to gets the same expiry once the drain
starts. The connection and task sets call back on every removal, so the drain
waits on events instead of polling.

They also keep the limits on request heads uvicorn lacks (:mod:`.limits`): a
head that takes longer than ``--read-timeout`` is cut with 408 (uvicorn has no
such timeout: a slowloris client holds a connection for ever), and with
httptools a head still incomplete past ``--max-header-size`` gets 431 (h11
bounds its buffer itself; httptools would buffer without end).

Example::

    state = DrainState(DrainFlag())        # a uvicorn ServerState
    config = uvicorn.Config(app, http=http_protocol("auto", read_timeout=10.0))
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from typing import Any, TypeVar

from uvicorn.server import ServerState

from ..errors import ServeError
from .common import DrainFlag, unread_bytes
from .limits import HeadDeadline, error_response

__all__ = ["DrainState", "DrainingHttp", "http_protocol"]

_T = TypeVar("_T")
_HTTP_PARSERS = ("auto", "h11", "httptools")
_CLOSE = (b"connection", b"close")


def http_protocol(
    name: str, *, read_timeout: float | None = None, max_header_size: int = 16384
) -> type[DrainingHttp]:
    """uvicorn's HTTP protocol class of that name, with the drain's keep-alive
    expiry and the head limits.

    Args:
        name: ``auto`` (httptools if installed, else h11), ``h11`` or ``httptools``.
        read_timeout: seconds a request head may take (None: no limit).
        max_header_size: bytes an incomplete head may take (httptools; h11 is
            given the same limit as ``h11_max_incomplete_event_size``).

    Returns:
        A protocol class to pass as ``uvicorn.Config(http=...)``.

    Raises:
        ServeError: an unknown name, or httptools requested but not installed.
    """
    if name not in _HTTP_PARSERS:
        raise ServeError(f"unknown HTTP parser {name!r}: choose one of {', '.join(_HTTP_PARSERS)}")
    if name == "auto":
        name = "httptools" if importlib.util.find_spec("httptools") else "h11"
    if name == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol

        class DrainingH11Protocol(H11Heads, DrainingHttp, H11Protocol):
            """uvicorn's h11 protocol with the drain's keep-alive expiry."""

        protocol: type[DrainingHttp] = DrainingH11Protocol
    else:
        if importlib.util.find_spec("httptools") is None:
            raise ServeError("HTTP parser 'httptools' is not installed: pip install gapless[serve]")
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        class DrainingHttpToolsProtocol(HttpToolsHeads, DrainingHttp, HttpToolsProtocol):
            """uvicorn's httptools protocol with the drain's keep-alive expiry."""

        protocol = DrainingHttpToolsProtocol
    protocol.read_timeout = read_timeout
    protocol.max_header_size = max_header_size
    return protocol


class DrainingHttp(asyncio.Protocol):
    """Mixed in before one of uvicorn's HTTP protocols, which provides these."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any
    timeout_keep_alive: int  # uvicorn's annotation; a float works as well
    timeout_keep_alive_task: asyncio.TimerHandle | None
    server_state: ServerState
    read_timeout: float | None = None
    max_header_size = 16384
    #: The application an unguarded request goes to (uvicorn's wrapping of
    #: the bare application, without gapless's middleware), when the protocol
    #: picks one per request (:class:`HttpToolsHeads`); None: always uvicorn's
    #: ``config.loaded_app``. Set by :func:`~.uvicorn.serve_asgi`.
    fast_app: Any = None
    picks_app = False
    _seen_data = False
    _draining = False
    _deadline: HeadDeadline

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._deadline = HeadDeadline(self.loop, self.read_timeout, self._head_expired)
        self._deadline.start()  # a new connection owes its first head within the time
        state = self.server_state
        if isinstance(state, DrainState) and state.flag.started:
            self.start_drain()  # accepted in the last batch before the listener closed

    def data_received(self, data: bytes) -> None:
        self._seen_data = True
        super().data_received(data)
        if self.read_timeout is not None:
            self._watch_head()

    def _watch_head(self) -> None:
        if self.transport.is_closing() or not self._head_pending():
            self._deadline.stop()
        else:
            self._deadline.start()  # a head began and is not complete yet

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.stop()
        super().connection_lost(exc)

    def _head_pending(self) -> bool:
        """True while part of a request head was received but not all of it."""
        raise NotImplementedError

    def _head_expired(self, received: int) -> None:
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # closed, or handed to a WebSocket protocol
        if self._seen_data and not self._head_pending():
            return  # the head completed meanwhile
        if self.cycle is not None and not self.cycle.response_complete:
            self._deadline.restart_later()  # never write into a response being sent
            return
        if self._seen_data:
            self.transport.write(error_response(408))
        self.transport.close()

    def refuse_head(self, status: int) -> None:
        """Answer ``status`` (408, 431) in place of a request, and close."""
        self._deadline.stop()
        self.transport.write(error_response(status))
        self.transport.close()

    def start_drain(self) -> None:
        """Give a connection never written to the keep-alive expiry of an idle one.

        Busy connections need nothing: their next response closes them, and one
        idle after a response already has its expiry armed.
        """
        self._draining = True
        fresh = self.cycle is None and not self._seen_data
        if fresh and self.timeout_keep_alive_task is None and not self.transport.is_closing():
            self._arm_expiry()

    def timeout_keep_alive_handler(self) -> None:
        """Close an idle connection, unless a request is waiting unread in its queue."""
        if self.transport.is_closing():
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None and unread_bytes(sock.fileno()) > 0:
            self._arm_expiry()  # data_received comes first and cancels this
            return
        self.transport.close()

    def _arm_expiry(self) -> None:
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )


class H11Heads(DrainingHttp):
    """Where a head stands with h11: its bytes wait in h11's buffer, which h11
    itself caps at ``h11_max_incomplete_event_size`` (400 beyond). Every request
    goes through the ASGI middleware (``picks_app`` is False)."""

    conn: Any

    def _head_pending(self) -> bool:
        import h11

        return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])


class HttpToolsHeads(DrainingHttp):
    """Where a head stands with httptools, and its size: httptools keeps a header
    being received in memory without any limit.

    Per request this costs two method calls and no ASGI middleware, the price
    of plain uvicorn's protocol (issue 12): uvicorn's own state says where a
    head stands (its ``scope`` is made at a message's beginning and given its
    ``method`` when the head is complete), and the bytes of a read bound the
    head's size. Only a request that may be too large (its head came in reads
    larger than the limit) or that arrives during a drain goes to uvicorn's
    ``config.loaded_app``, with the middleware's exact checks; the rest go to
    :attr:`fast_app`. A request already
    received when the drain starts gets ``Connection: close`` added to its
    cycle's default headers (see :meth:`start_drain`).
    """

    picks_app = True
    config: Any
    app: Any
    scope: Any
    headers: Any
    url: bytes
    pipeline: Any
    _read_scope: object = None  # uvicorn's scope when the current read began
    _read_size = 0  # bytes of the current read
    _head_bytes = 0  # bytes of the incomplete head in the reads before this one

    def _head_pending(self) -> bool:
        return self.scope is not None and "method" not in self.scope

    def data_received(self, data: bytes) -> None:
        self._seen_data = True
        scope = self._read_scope = self.scope
        pending = scope is not None and "method" not in scope
        self._read_size = len(data)
        super(DrainingHttp, self).data_received(data)  # uvicorn's, DrainingHttp's inlined
        if self.read_timeout is not None:
            self._watch_head()
        if self.scope is None or "method" in self.scope or self.transport.is_closing():
            return  # no head pending: the usual case, a whole request in one read
        if pending and scope is self.scope:
            self._head_bytes += len(data)  # the whole read belongs to this head
        else:  # it began in this read: what is known of it
            self._head_bytes = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if self._head_bytes > self.max_header_size:
            self.refuse_head(431)

    def on_headers_complete(self) -> None:
        earlier = self._head_bytes if self.scope is self._read_scope else 0
        if self._draining or earlier + self._read_size > self.max_header_size:
            self.app = self.config.loaded_app  # the middleware decides exactly
        else:
            self.app = self.fast_app or self.config.loaded_app
        super().on_headers_complete()  # type: ignore[misc]

    def start_drain(self) -> None:
        """Also have the requests already received, whose scopes went unmarked,
        answer with ``Connection: close``: through their cycle's own default
        headers, which uvicorn (0.30 and later) honours by closing after."""
        super().start_drain()
        for cycle in [self.cycle, *(cycle for cycle, _ in self.pipeline)]:
            if cycle is not None and not cycle.response_started:
                cycle.default_headers = [*cycle.default_headers, _CLOSE]


class WatchedSet(set[_T]):
    """A set that calls back on every removal: the drain waits on that, not a timer."""

    def __init__(self, on_removal: Callable[[], object]) -> None:
        super().__init__()
        self._on_removal = on_removal

    def discard(self, item: object) -> None:
        super().discard(item)
        self._on_removal()

    def remove(self, item: _T) -> None:
        super().remove(item)
        self._on_removal()


class DrainState(ServerState):
    """uvicorn's shared server state, with the drain flag and a change event."""

    def __init__(self, flag: DrainFlag) -> None:
        super().__init__()
        self.flag = flag
        self.changed = asyncio.Event()
        self.connections = WatchedSet(self.changed.set)
        # A plain set: a request's task pays nothing for the drain; the drain
        # watches the tasks in flight itself (watch_tasks).
        self.tasks: set[asyncio.Task[None]] = set()
        self._watched: set[asyncio.Task[None]] = set()

    def watch_tasks(self) -> None:
        """Have every task in flight set ``changed`` when it ends; called before
        each wait of a drain, when the tasks are few. (A connection closed after
        its response is removed before its task ends: the drain then wakes,
        finds the task, and waits for it here.)"""
        for task in self.tasks - self._watched:
            self._watched.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._watched.discard(task)
        self.changed.set()
