"""Letting go of what a server process holds: listeners, unix socket paths, PID file.

Two ways out:

* :func:`release`, for ``close()``: every listener is closed (its unix path
  unlinked at the final stop), then the PID file is removed if it names this
  process. Each step runs whatever the previous one raised.
* :func:`hard_exit`, past the drain deadline or on a second stop request: only
  what must not be left behind (unix paths at the final stop, the PID file),
  then the process group if gapless made it, then ``os._exit``. It takes no lock
  and runs no hook, so a hook blocked for ever, holding the upgrader's lock or
  not, cannot keep a process past its deadline; an error on the way is logged
  and the exit goes on.

Why the group: a successor is started in a process group of its own (see
:mod:`gapless.library.successor`), so the workers it forks, which hold the
listening sockets too, share it. Killing the group ends them with their server,
as ``gapless run`` does for a generation. A first process started by a shell or
an init system is not known to lead a group of its own (a pipeline shares its
job's group), so only its own process exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..errors import PidFileError
from ..proc.pidfile import remove_pid_file
from ..sockets.listeners import remove_unix_path
from .listenerset import Listener

__all__ = ["hard_exit", "release"]

log = logging.getLogger("gapless")


def release(
    listeners: list[Listener], pid_file: str | os.PathLike[str] | None, final: bool
) -> PidFileError | None:
    """Close the listeners, emptying ``listeners``, then remove the PID file if ours.

    Args:
        listeners: popped one by one, so a hard exit racing this sees only the rest.
        pid_file: removed only if it names this process.
        final: no successor took the sockets over: unlink the unix paths too.

    Returns:
        The PID file's error, for the caller to raise once all else is done.
    """
    while listeners:
        listener = listeners.pop()
        if final:
            remove_unix_path(listener.stamp)
        listener.sock.close()
    if pid_file is None:
        return None
    try:
        remove_pid_file(pid_file)
    except PidFileError as exc:
        return exc
    return None


def hard_exit(
    listeners: Sequence[Listener],
    pid_file: str | os.PathLike[str] | None,
    *,
    final: bool,
    own_group: bool,
) -> NoReturn:
    """Leave now: unlink unix paths if ``final``, remove the PID file if ours, kill
    the process group if ``own_group`` (this process with it), else exit 1."""
    try:
        if final:
            for listener in list(listeners):
                remove_unix_path(listener.stamp)
        if pid_file is not None:
            remove_pid_file(pid_file)
    except Exception as exc:
        log.error("while exiting: %s", exc)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if own_group:
            # One signal for the whole group: a worker cannot fork its way out.
            with contextlib.suppress(OSError):
                os.killpg(os.getpgrp(), signal.SIGKILL)
        os._exit(1)
