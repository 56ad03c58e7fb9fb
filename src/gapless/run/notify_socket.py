"""The manager's ``NOTIFY_SOCKET``: a path only its user can reach.

An abstract socket (``@name``) is reachable by every process in the network
namespace: any local user could send ``READY=1`` datagrams, or flood the
socket's queue so that a generation's own ``READY=1`` waits behind them. The
manager's socket is therefore a path in the user's private (0700) control
directory (gapless.run.control_client), where only the user and root can send.
Children of another user (a server that drops privileges) cannot: their
readiness must come from the process that started as the manager's user.

A manager killed outright cannot remove its socket file; the next one removes
the files no socket is bound to any more (a datagram ``connect`` is refused).
Should the directory be unusable, the socket is abstract after all, and the
manager drops datagrams from other users before logging anything about them.

Example::

    receiver = private_receiver(environ, log)
    env["NOTIFY_SOCKET"] = receiver.address     # /run/user/1000/gapless/notify-...
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import stat
from collections.abc import Mapping

from ..errors import ControlError, NotifyError
from ..systemd.notify_receiver import NotifyReceiver
from .control_client import control_directory, ensure_private_directory
from .eventlog import EventLog

__all__ = ["private_receiver"]

_NAME = re.compile(r"notify-\d+-[0-9a-f]{8}\.sock")


def private_receiver(environ: Mapping[str, str], log: EventLog) -> NotifyReceiver:
    """A receiver bound in the user's control directory (an abstract one if it
    cannot be, with a warning)."""
    directory = control_directory(environ)
    name = f"notify-{os.getpid()}-{secrets.token_hex(4)}.sock"
    try:
        ensure_private_directory(directory)
        remove_stale(directory)
        return NotifyReceiver(os.path.join(directory, name))
    except (ControlError, NotifyError, OSError) as exc:
        log.event(
            "warning",
            f"{exc}; the notify socket is abstract instead, reachable by any local process "
            "(datagrams of other users are dropped)",
        )
        return NotifyReceiver()


def remove_stale(directory: str) -> None:
    """Remove the notify socket files in ``directory`` that nothing is bound to."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if _NAME.fullmatch(name) and stat.S_ISSOCK(os.lstat(path).st_mode) and _stale(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _stale(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False
