"""The process side of one generation: its leader, its output pipes and what it said.

Example::

    proc = GenerationProcess(2, child)
    proc.fd("stdout")  # the read end of its stdout pipe, None once closed
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..proc.spawn import Child, ExitStatus, StderrTail

__all__ = ["STREAMS", "GenerationProcess"]

STREAMS = ("stderr", "stdout")  # the output a generation's pipes carry, relayed alike


@dataclass
class GenerationProcess:
    """The process of a generation (gapless.run.generations.Generation is its pure
    record): its leader, stderr tail and what it reported."""

    number: int
    child: Child
    tail: StderrTail = field(default_factory=StderrTail)
    partial: dict[str, bytes] = field(default_factory=dict)  # stream -> unended line
    status: ExitStatus | None = None  # set once the leader was reaped
    released: bool = False  # the generation is over; only its output pipes may be open
    ready_via: str = ""
    start: str | None = "cold"  # "warm": forked by the fork server (gapless.run.warm)
    status_line: str | None = None  # the last STATUS= it sent

    @property
    def pid(self) -> int:
        return self.child.pid

    def last_stderr_lines(self, count: int = 5) -> list[str]:
        return self.tail.text().strip().splitlines()[-count:]

    def fd(self, stream: str) -> int | None:
        """The read end of the child's ``stream`` pipe, None once closed."""
        return self.child.stderr_fd if stream == "stderr" else self.child.stdout_fd

    def close_fd(self, stream: str) -> None:
        fd = self.fd(stream)
        if fd is not None:
            os.close(fd)
        if stream == "stderr":
            self.child.stderr_fd = None
        else:
            self.child.stdout_fd = None

    @property
    def piped(self) -> bool:
        """Whether an output pipe is still open: a generation is forgotten only after."""
        return any(self.fd(stream) is not None for stream in STREAMS)
