"""The listening sockets of one server process: inherited ones claimed by
``listen()`` calls, new ones opened, and what a successor is handed."""

from __future__ import annotations

import logging
import socket

from ..errors import BindError
from ..sockets.addresses import Bind
from ..sockets.listeners import (
    DEFAULT_BACKLOG,
    listener_address,
)
from ..systemd.binds import Listener, take_or_open

__all__ = ["Listener", "ListenerSet"]

log = logging.getLogger("gapless")


class ListenerSet:
    """Args:
    inherited: ``(name, socket)`` from ``LISTEN_FDS``.
    from_gapless: they come from a gapless predecessor, whose unix paths are
        ours to unlink once we are the last process (systemd's are systemd's).
    """

    def __init__(self, inherited: list[tuple[str | None, socket.socket]], from_gapless: bool):
        self.items: list[Listener] = []
        self._inherited = inherited
        self._from_gapless = from_gapless

    def listen(
        self, bind: Bind, backlog: int = DEFAULT_BACKLOG, mode: int | None = None
    ) -> socket.socket:
        """Claim the inherited socket for ``bind`` (by name, then address) or open one.

        Raises:
            BindError: ``listen()`` was already called for this bind.
            ListenError: a new socket could not be opened.
        """
        if any(existing.bind == bind for existing in self.items):
            raise BindError(f"invalid bind {str(bind)!r}: listen() was already called for it")
        [listener] = take_or_open(
            [bind], self._inherited, own_inherited=self._from_gapless, backlog=backlog, mode=mode
        )
        kind = " (inherited)" if listener.inherited else ""
        log.info("listening on %s%s", describe(listener.sock), kind)
        self.items.append(listener)
        return listener.sock

    @property
    def sockets(self) -> list[socket.socket]:
        return [listener.sock for listener in self.items]

    def for_successor(self) -> list[tuple[str | None, socket.socket]]:
        return [(listener.name, listener.sock) for listener in self.items]

    def close_unclaimed(self) -> None:
        """Close the inherited sockets no ``listen()`` asked for (a port changed or
        was dropped): once this process is ready, nobody will."""
        for _, sock in self._inherited:
            log.info("closing inherited %s: no longer requested", describe(sock))
            sock.close()
        self._inherited.clear()


def describe(sock: socket.socket) -> str:
    return f"{listener_address(sock)} (fd {sock.fileno()})"
