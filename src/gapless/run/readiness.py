"""When is a starting generation ready? The ``--ready`` modes.

* ``notify``: it (or a descendant) sent ``READY=1`` to its ``NOTIFY_SOCKET``;
  the manager routes the datagram and asks :attr:`ReadyMode.notify`.
* ``accept``: some process of it waits for connections on one of the handed
  sockets, as /proc shows (:mod:`gapless.run.acceptwatch`), or holds a connection it
  accepted on one: under saturating load a server that accepts without blocking
  (gunicorn's sync worker) is never seen waiting, but it soon holds a connection.
  For servers that speak no notify protocol. Looked at every 20 ms while a
  generation starts, and only then.
* ``auto`` (default): ``accept``, and ``READY=1`` alone only when there is no
  socket to watch. A ``READY=1`` is not trusted by itself: gunicorn's arbiter sends
  it before any worker accepts, and a server that bound a port of its own sends it
  too. After it the manager looks at /proc at once, and the generation is ready
  ("notify+accept") as soon as it accepts on a handed socket.
* ``delay:S``: S seconds after the start, a weak fallback that must be asked for.

A probe through the shared socket is not offered: either generation may answer.

In ``auto`` and ``accept`` modes each look also asks whether the generation waits
for connections on a TCP port of its own and on none of ours (``python -m
http.server``, a server that ignores LISTEN_FDS): :meth:`Readiness.check` then
raises :class:`~gapless.errors.OwnPortError` naming the port and the fix, so the
start fails within a second instead of at ``--ready-timeout``.

Example::

    >>> mode = ReadyMode.parse("auto")
    >>> mode.notify, mode.accept, mode.delay
    (True, True, None)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from dataclasses import dataclass

from ..errors import ConfigError, OwnPortError
from ..proc.subreaper import group_members
from ..sockets.connections import ConnectionCounter
from ..sockets.sockdiag import tcp_listeners
from .acceptwatch import accepting, waiter

__all__ = ["ACCEPT_CHECK_INTERVAL", "Readiness", "ReadyMode"]

#: Seconds before the first look at /proc for a starting generation's accept();
#: each later look waits 1.5 times longer, up to ACCEPT_CHECK_MAX: a scan of
#: /proc costs a few milliseconds of CPU, taken from the servers beside it.
ACCEPT_CHECK_INTERVAL = 0.02
ACCEPT_CHECK_MAX = 0.25


@dataclass(frozen=True)
class ReadyMode:
    """How a starting generation shows it is ready: ``notify``, ``accept``, both
    (``auto``, whichever comes first), or ``delay:S``, a weak fallback."""

    text: str
    notify: bool
    accept: bool
    delay: float | None = None

    def __str__(self) -> str:
        return self.text  # what parse() reads back, e.g. in --print-config

    @classmethod
    def parse(cls, text: str) -> ReadyMode:
        """Parse ``auto``, ``notify``, ``accept`` or ``delay:SECONDS``.

        Raises:
            ConfigError: naming the bad value.
        """
        if text in ("auto", "notify", "accept"):
            return cls(text, notify=text != "accept", accept=text != "notify")
        kind, _, seconds = text.partition(":")
        if kind == "delay":
            with contextlib.suppress(ValueError):
                delay = float(seconds)
                if 0 <= delay < float("inf"):
                    return cls(text, notify=False, accept=False, delay=delay)
        raise ConfigError(
            f"invalid --ready {text!r}: use auto, notify, accept or delay:SECONDS (e.g. delay:2)"
        )


class Readiness:
    """The timed checks of a mode: the accept watch and the delay.

    Args:
        mode: the ``--ready`` setting.
        inodes: the inodes of the handed sockets, for the accept watch.
        served: counts the connections accepted on those sockets that a process
            group holds; one held by the starting generation means it accepts.
        handed: the handed sockets as the generation sees them, e.g.
            ``"fd 3 web=127.0.0.1:8000"``, for the message of :class:`OwnPortError`.

    Raises:
        ConfigError: ``accept`` without any socket to watch.
    """

    def __init__(
        self,
        mode: ReadyMode,
        inodes: Collection[int],
        served: ConnectionCounter | None = None,
        handed: str = "",
    ) -> None:
        self.mode = mode
        self._inodes = frozenset(inodes)
        self._served = served
        self._handed = handed
        self._accepting = self._accept_watch()
        self._next_check = 0.0
        self._interval = ACCEPT_CHECK_INTERVAL
        self._notified = False

    def _accept_watch(self) -> Callable[[int, Collection[int]], bool] | None:
        if not self.mode.accept or (self.mode.notify and not self._inodes):
            return None  # auto with no socket to watch: notify alone
        if not self._inodes:
            raise ConfigError("--ready accept needs a --bind to watch; add one or use notify")
        return accepting

    def started(self, now: float) -> None:
        """A generation was spawned at ``now``: give it a moment before looking."""
        self._interval = ACCEPT_CHECK_INTERVAL
        self._next_check = now + self._interval
        self._notified = False

    def notified(self, now: float) -> bool:
        """The starting generation sent READY=1 at ``now``: is that enough?

        Returns:
            True if it is ready now; False if it must also be seen accepting (then
            the next look is at once, and :meth:`check` answers "notify+accept").
        """
        if self._accepting is None:
            return self.mode.notify
        self._notified = True
        self._interval = ACCEPT_CHECK_INTERVAL
        self._next_check = now
        return False

    def wake_at(self, started: float) -> float | None:
        """When to look at the generation started at ``started``; None: never."""
        times = [] if self.mode.delay is None else [started + self.mode.delay]
        if self._accepting is not None:
            times.append(self._next_check)
        return min(times, default=None)

    def check(self, pid: int, started: float, now: float) -> str | None:
        """Whether the generation of leader ``pid`` is ready at ``now``.

        Returns:
            ``"delay"``, ``"accept"`` or ``"notify+accept"``, how it was found
            ready; None if not yet.

        Raises:
            OwnPortError: it waits for connections on a TCP port of its own and on
                none of the handed sockets.
        """
        if self.mode.delay is not None and now >= started + self.mode.delay:
            return "delay"
        if self._accepting is not None and now >= self._next_check:
            self._interval = min(self._interval * 1.5, ACCEPT_CHECK_MAX)
            self._next_check = now + self._interval
            if self._accepting(pid, self._inodes) or self._holds_connections(pid):
                return "notify+accept" if self._notified else "accept"
            self._refuse_own_port(pid)
        return None

    def _refuse_own_port(self, pid: int) -> None:
        try:
            listening = tcp_listeners()
        except OSError:
            return  # no sock_diag here: the ready timeout still ends the start
        theirs = {inode: where for inode, where in listening.items() if inode not in self._inodes}
        found = waiter(pid, theirs)
        if found is not None:
            who, inode = found
            host, port = theirs[inode]
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise OwnPortError(
                f"(pid {who}) listens on {where} itself instead of the sockets gapless "
                f"passed ({self._handed}): make it serve LISTEN_FDS, e.g. uvicorn --fd 3, "
                "gunicorn (reads LISTEN_FDS), or use gapless serve"
            )

    def _holds_connections(self, pid: int) -> bool:
        # The generation runs in a process group of its own, led by ``pid``; what it
        # inherited is the listeners alone, so a connection it holds, it accepted.
        return self._served is not None and self._served.count(group_members(pid)) > 0
