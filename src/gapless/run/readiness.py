"""When is a starting generation ready? The ``--ready`` modes.

* ``notify``: it (or a descendant) sent ``READY=1`` to its ``NOTIFY_SOCKET``;
  the manager routes the datagram and asks :attr:`ReadyMode.notify`.
* ``accept``: some process of it waits for connections on one of the handed
  sockets, as /proc shows (:mod:`gapless.run.acceptwatch`), or holds a connection it
  accepted on one: under saturating load a server that accepts without blocking
  (gunicorn's sync worker) is never seen waiting, but it soon holds a connection.
  For servers that speak no notify protocol. Looked at every 20 ms while a
  generation starts, and only then.
* ``auto`` (default): whichever of the two comes first.
* ``delay:S``: S seconds after the start, a weak fallback that must be asked for.

A probe through the shared socket is not offered: either generation may answer.

Example::

    >>> mode = ReadyMode.parse("auto")
    >>> mode.notify, mode.accept, mode.delay
    (True, True, None)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from dataclasses import dataclass

from ..errors import ConfigError
from ..proc.subreaper import group_members
from ..sockets.connections import ConnectionCounter

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

    Raises:
        ConfigError: ``accept`` without any socket to watch.
    """

    def __init__(
        self, mode: ReadyMode, inodes: Collection[int], served: ConnectionCounter | None = None
    ) -> None:
        self.mode = mode
        self._inodes = frozenset(inodes)
        self._served = served
        self._accepting = self._accept_watch()
        self._next_check = 0.0
        self._interval = ACCEPT_CHECK_INTERVAL

    def _accept_watch(self) -> Callable[[int, Collection[int]], bool] | None:
        if not self.mode.accept or (self.mode.notify and not self._inodes):
            return None  # auto with no socket to watch: notify alone
        if not self._inodes:
            raise ConfigError("--ready accept needs a --bind to watch; add one or use notify")
        from .acceptwatch import accepting

        return accepting

    def started(self, now: float) -> None:
        """A generation was spawned at ``now``: give it a moment before looking."""
        self._interval = ACCEPT_CHECK_INTERVAL
        self._next_check = now + self._interval

    def wake_at(self, started: float) -> float | None:
        """When to look at the generation started at ``started``; None: never."""
        times = [] if self.mode.delay is None else [started + self.mode.delay]
        if self._accepting is not None:
            times.append(self._next_check)
        return min(times, default=None)

    def check(self, pid: int, started: float, now: float) -> str | None:
        """Whether the generation of leader ``pid`` is ready at ``now``.

        Returns:
            ``"delay"`` or ``"accept"``, how it was found ready; None if not yet.
        """
        if self.mode.delay is not None and now >= started + self.mode.delay:
            return "delay"
        if self._accepting is not None and now >= self._next_check:
            self._interval = min(self._interval * 1.5, ACCEPT_CHECK_MAX)
            self._next_check = now + self._interval
            if self._accepting(pid, self._inodes) or self._holds_connections(pid):
                return "accept"
        return None

    def _holds_connections(self, pid: int) -> bool:
        # The generation runs in a process group of its own, led by ``pid``; what it
        # inherited is the listeners alone, so a connection it holds, it accepted.
        return self._served is not None and self._served.count(group_members(pid)) > 0
