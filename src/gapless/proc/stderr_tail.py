"""The last lines a child wrote to stderr, kept while they are passed on."""

from __future__ import annotations

import os

__all__ = ["StderrTail"]


class StderrTail:
    """The last lines a child wrote, kept to explain why it failed.

    Args:
        lines: how many lines to keep.
        max_bytes: an upper bound on the bytes kept, whatever the line count.
    """

    def __init__(self, lines: int = 20, max_bytes: int = 8192) -> None:
        self._lines = lines
        self._max_bytes = max_bytes
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        """Append what the child wrote, dropping what falls out of the window."""
        self._buf += data
        del self._buf[: -self._max_bytes]
        parts = self._buf.split(b"\n")
        keep = self._lines + (parts[-1] == b"")  # a trailing newline ends, not starts, a line
        if len(parts) > keep:
            self._buf = bytearray(b"\n".join(parts[-keep:]))

    def text(self) -> str:
        """Return the kept tail, decoded with replacement of invalid bytes."""
        return self._buf.decode(errors="replace")

    def pump(self, fd: int, *, forward_to: int | None = 2) -> bool:
        """Read what ``fd`` (non-blocking) holds, forward it and keep its tail.

        Args:
            fd: the read end of the child's stderr pipe.
            forward_to: where the bytes go on to (our stderr), or None to only keep them.

        Returns:
            False once the pipe reached EOF, True while it may still deliver.
        """
        for _ in range(16):  # bounded, so a chatty child cannot starve an event loop
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return True
            if not data:
                return False
            if forward_to is not None:
                _write_all(forward_to, data)
            self.feed(data)
        return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        pass  # our own stderr is gone or full: keeping the child's tail matters more
