"""Writing to a log fd without ever blocking, and without changing it for others.

A manager's stderr is often a pipe to a log shipper, or a terminal. If the
reader stops (a shipper paused, a terminal after Ctrl-S), a plain ``write``
blocks once the pipe's 64 KiB are full, and the whole event loop with it.
Setting ``O_NONBLOCK`` on the fd is no fix: the flag belongs to the open file
description, shared with every process that inherited it (the shell, a
supervisor, the generations' stdout), and programs that meet ``EAGAIN`` where
they expect a blocking fd misbehave (a shell drops its terminal). So
:class:`Outlet` gets a description of its own:

* a pipe or FIFO, or a terminal, is opened anew through ``/proc/self/fd/N``,
  which yields a new description of the same pipe or device; ``O_NONBLOCK`` is
  set on that one only;
* a socket (journald's stream) is written with ``send(MSG_DONTWAIT)``, a
  per-call flag;
* a regular file or another device is written as is: no reader holds it back.

Example::

    outlet = Outlet(2)
    written = outlet.write(b"a line\\n")   # may be less than all, 0 when full
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

__all__ = ["Outlet"]


class Outlet:
    """A non-blocking writer to ``fd``; see the module docstring.

    Args:
        fd: where to write (kept open; the outlet closes only what it opened).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._own: int | None = None
        self._sock: socket.socket | None = None
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return  # a closed fd: writes fail and are dropped
        if stat.S_ISSOCK(mode):
            self._sock = socket.socket(fileno=os.dup(fd))
        elif stat.S_ISFIFO(mode) or (stat.S_ISCHR(mode) and os.isatty(fd)):
            flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
            with contextlib.suppress(OSError):  # ENXIO: a FIFO with no reader left
                self._own = os.open(f"/proc/self/fd/{fd}", flags)

    def fileno(self) -> int:
        """The fd to wait on for writability (a selector's ``EVENT_WRITE``)."""
        if self._sock is not None:
            return self._sock.fileno()
        return self._fd if self._own is None else self._own

    @property
    def blocking(self) -> bool:
        """Whether a write may block after all (a regular file, a device)."""
        return self._sock is None and self._own is None

    def write(self, data: bytes) -> int:
        """Write what fits now.

        Returns:
            The number of bytes written: 0 when the reader is behind.

        Raises:
            OSError: the fd is gone (EPIPE, EBADF, ENOSPC): the caller drops the data.
        """
        try:
            if self._sock is not None:
                return self._sock.send(data, socket.MSG_DONTWAIT)
            return os.write(self.fileno(), data)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        """Close what the outlet opened; the fd it was given stays open."""
        if self._own is not None:
            os.close(self._own)
            self._own = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
