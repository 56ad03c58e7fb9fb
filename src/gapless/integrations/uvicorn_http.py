"""uvicorn's HTTP protocols with the drain's rules for idle connections.

uvicorn closes an idle keep-alive connection when its keep-alive time runs out,
without looking whether the client has just sent a request; and on shutdown it
closes every idle connection at once. The protocols here close an idle
connection only at keep-alive expiry, also during a drain, and only when its
receive queue is empty: a request that arrived unseen is read and answered. A
connection accepted but never written to gets the same expiry once the drain
starts. The connection and task sets call back on every removal, so the drain
waits on events instead of polling.

Example::

    state = DrainState(DrainFlag())        # a uvicorn ServerState
    config = uvicorn.Config(app, http=http_protocol("auto"))
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from typing import Any, TypeVar

from uvicorn.server import ServerState

from ..errors import ServeError
from .common import DrainFlag, unread_bytes

__all__ = ["DrainState", "DrainingHttp", "http_protocol"]

_T = TypeVar("_T")
_HTTP_PARSERS = ("auto", "h11", "httptools")


def http_protocol(name: str) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class of that name, with the drain's keep-alive expiry.

    Args:
        name: ``auto`` (httptools if installed, else h11), ``h11`` or ``httptools``.

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

        class DrainingH11Protocol(DrainingHttp, H11Protocol):
            """uvicorn's h11 protocol with the drain's keep-alive expiry."""

        return DrainingH11Protocol
    if importlib.util.find_spec("httptools") is None:
        raise ServeError("HTTP parser 'httptools' is not installed: pip install gapless[serve]")
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class DrainingHttpToolsProtocol(DrainingHttp, HttpToolsProtocol):
        """uvicorn's httptools protocol with the drain's keep-alive expiry."""

    return DrainingHttpToolsProtocol


class DrainingHttp(asyncio.Protocol):
    """Mixed in before one of uvicorn's HTTP protocols, which provides these."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any
    timeout_keep_alive: int  # uvicorn's annotation; a float works as well
    timeout_keep_alive_task: asyncio.TimerHandle | None
    server_state: ServerState
    _seen_data = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        state = self.server_state
        if isinstance(state, DrainState) and state.flag.started:
            self.start_drain()  # accepted in the last batch before the listener closed

    def data_received(self, data: bytes) -> None:
        self._seen_data = True
        super().data_received(data)

    def start_drain(self) -> None:
        """Give a connection never written to the keep-alive expiry of an idle one.

        Busy connections need nothing: their next response closes them, and one
        idle after a response already has its expiry armed.
        """
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
        self.tasks = WatchedSet(self.changed.set)
