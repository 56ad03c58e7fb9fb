"""Waiting on a process's output, the one way every test does it: on a line (or EOF)
with a timeout that fails loudly, never on a sleep.

:class:`Lines` follows a text stream in a thread (a manager's stderr, a FIFO several
processes write to); :func:`read_line` and :func:`read_until_eof` read a raw fd.
"""

from __future__ import annotations

import os
import queue
import re
import select
import threading
import time
from contextlib import suppress
from typing import IO

TIMEOUT = 15.0


class Lines:
    """The lines of a text stream, read by a thread; waits are on lines, with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._matched: set[int] = set()
        self.ended = False
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        with suppress(ValueError, OSError):
            for line in stream:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_line(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """The first line not matched before that matches ``pattern``, read so far or
        still to come (several processes may write to one stream, in any order);
        fails loudly on timeout or at the stream's end."""
        regex = re.compile(pattern)
        start = 0
        while True:
            for index in range(start, len(self.lines)):
                match = regex.search(self.lines[index])
                if match and index not in self._matched:
                    self._matched.add(index)
                    return match
            start = len(self.lines)
            if self.ended:
                raise AssertionError(f"stream ended before {pattern!r}:\n{self.tail()}")
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} in {timeout} s:\n{self.tail()}") from None
            if line is None:
                self.ended = True
            else:
                self.lines.append(line)

    def collect(self) -> None:
        """Take in what was read so far, without waiting."""
        with suppress(queue.Empty):
            while (line := self._queue.get_nowait()) is not None:
                self.lines.append(line)

    def read_to_end(self, timeout: float = TIMEOUT) -> None:
        """Take in every line up to the stream's end (its writers have exited or were
        killed); ``queue.Empty`` if a line takes longer than ``timeout``."""
        while not self.ended:
            line = self._queue.get(timeout=timeout)
            if line is None:
                self.ended = True
            else:
                self.lines.append(line)

    def tail(self, count: int = 60) -> str:
        return "\n".join(self.lines[-count:])


def read_line(fd: int, timeout: float = TIMEOUT) -> bytes:
    """One line from ``fd``, read a byte at a time so nothing after it is consumed;
    fails loudly on timeout or EOF before the newline."""
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no line in {timeout} s, got {data!r}"
        chunk = os.read(fd, 1)
        assert chunk, f"EOF before a full line, got {data!r}"
        data += chunk
    return data


def read_until_eof(fd: int, timeout: float = TIMEOUT) -> bytes:
    """Everything ``fd`` gives up to EOF; fails loudly if EOF does not come in time."""
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        assert ready, f"no EOF within {timeout} s"
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
