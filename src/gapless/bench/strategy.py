"""What every restart strategy offers the bench, and what a reload reports.

Example::

    class Mine(Strategy):
        name = "mine"
        summary = "what it does, in one line"
        default_command = ("my-server", "--port", "{port}")
        def start(self, address): ...
        def reload(self): ...   # -> ReloadTiming, once the reload is complete
        def stop(self): ...
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..sockets.addresses import TcpAddress

__all__ = ["ReloadTiming", "Strategy"]


@dataclass(frozen=True)
class ReloadTiming:
    """One reload's events, as ``time.monotonic()`` values: the signal (or command)
    was sent, the new generation was seen ready, the last old process exited."""

    signalled: float
    ready: float
    old_exited: float
    old_pids: tuple[int, ...]
    new_pids: tuple[int, ...]


class Strategy(abc.ABC):
    """A way to run COMMAND and restart it.

    Args:
        command: the server command; empty for the strategy's default.
        timeout: seconds any one wait may take before it fails loudly.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    default_command: ClassVar[tuple[str, ...]]

    def __init__(self, command: Sequence[str] = (), *, timeout: float = 60.0) -> None:
        self.command = list(command) or list(self.default_command)
        self.timeout = timeout
        self.address: TcpAddress | None = None
        #: The process that stands for the server now (the one to stop); set as soon
        #: as it is spawned, so that a failed start is cleaned up too.
        self.main_pid: int | None = None

    @abc.abstractmethod
    def start(self, address: TcpAddress) -> None:
        """Start the server on ``address``; return once it answers.

        Raises:
            BenchError: it did not start (its last output lines are in the message).
        """

    @abc.abstractmethod
    def reload(self) -> ReloadTiming:
        """Restart the server; return once the new generation serves and the old one
        has exited.

        Raises:
            BenchError: the reload did not complete within the timeout.
        """

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop every process of the server, even after a failed start or reload;
        none is left behind."""

    def output_tail(self) -> list[str]:
        """The server's last output lines, for error messages."""
        return []
