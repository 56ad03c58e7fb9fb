"""The seam between :class:`~gapless.run.driver.Driver` and the OS processes.

:class:`Processes` is what the driver (and the status and in-place upgrade
helpers it calls) asks of the generations' processes. :class:`~gapless.run.children.Children`
is the real one; a test may hand the driver a fake, whose processes' exits it
decides, to drive reloads with no process at all (tests/run/test_driver_seam.py).

Example::

    driver = Driver(config, environ, selector, log, upstream, on_report,
                    children=lambda on_exit: FakeChildren(on_exit))
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from ..proc.watchdog import Watchdog
from .children import GenerationProcess

__all__ = ["OnExit", "Processes", "ProcessesFactory"]

#: Called once with each generation whose leader exited (and was reaped).
OnExit = Callable[[GenerationProcess], None]


class Processes(Protocol):
    """The generations' processes; see :class:`~gapless.run.children.Children` for
    what each method means."""

    watchdog: Watchdog | None

    def spawn(
        self,
        number: int,
        command: Sequence[str],
        listeners: Sequence[tuple[str | None, socket.socket]],
        env: Mapping[str, str],
        death_signal: int | None = None,
        warm: bool = False,
    ) -> GenerationProcess: ...

    def adopt_watchdog(self, state: Mapping[str, int] | None) -> None: ...

    def adopt(
        self, number: int, pid: int, stderr_fd: int | None, stdout_fd: int | None = None
    ) -> GenerationProcess: ...

    def reap(self) -> None: ...

    def start_forkserver(self, command: Sequence[str], env: Mapping[str, str]) -> None: ...

    def retire_forkserver(self, why: str) -> None: ...

    def process(self, number: int) -> GenerationProcess | None: ...

    def sender(self, pid: int, first: int | None = None) -> GenerationProcess | None: ...

    def lingering(self, proc: GenerationProcess) -> bool: ...

    def release(self, number: int) -> None: ...

    def live(self) -> list[GenerationProcess]: ...

    def close(self) -> None: ...


#: Makes the processes of a driver, given the driver's :data:`OnExit`.
ProcessesFactory = Callable[[OnExit], Processes]
