"""The new instance's side of a handoff: take the running instance's sockets,
then, once serving, tell it to retire (the protocol is in :mod:`gapless.sockets.handoff`).

Example::

    taken = take_sockets("/run/app.handoff")
    if taken is None:
        ...                      # nobody serves the path: bind anew
    else:
        ...                      # serve taken.sockets; once ready:
        taken.retire()
        taken.close()
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

from ..errors import HandoffError
from .credentials import peer_credentials
from .handoff import Named, receive_message, send_message, uid_refusal

__all__ = ["Taken", "take_sockets"]


@dataclass
class Taken:
    """The sockets taken from the running instance, and the way to retire it."""

    conn: socket.socket
    holder_pid: int
    sockets: list[Named] = field(default_factory=list)

    def retire(self, timeout: float = 5.0) -> None:
        """Tell the previous instance to drain and exit; wait for its acknowledgement.

        Raises:
            HandoffError: it went away or did not answer within ``timeout``.
        """
        self.conn.settimeout(timeout)
        try:
            send_message(self.conn, {"op": "retire"})
            answer = receive_message(self.conn, f"pid {self.holder_pid}")[0]
        except (OSError, HandoffError) as exc:
            raise HandoffError(
                f"pid {self.holder_pid} did not confirm its retirement: {exc}"
            ) from None
        if answer.get("op") != "retiring":
            raise HandoffError(f"pid {self.holder_pid} answered {answer!r} to retire")

    def close(self) -> None:
        """End the session (not the sockets, which are the caller's now)."""
        self.conn.close()


def take_sockets(path: str, timeout: float = 10.0) -> Taken | None:
    """Take the sockets of the instance serving ``path``.

    Args:
        path: the handoff socket.
        timeout: seconds to wait for each message.

    Returns:
        The sockets, named as the holder named them; None when nobody serves
        ``path`` (no file, or a stale one): the caller binds anew.

    Raises:
        HandoffError: the holder runs as another user, or its answer was broken
            or late; no socket is left open then.
    """
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    conn.settimeout(timeout)
    try:
        conn.connect(path)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        conn.close()
        return None
    except OSError as exc:
        conn.close()
        raise HandoffError(f"cannot reach handoff socket {path!r}: {exc.strerror}") from None
    # SO_PEERCRED names whoever called listen(): an earlier instance, if the socket
    # was passed on since. The holder's own messages say who serves it now.
    taken = Taken(conn, holder_pid=peer_credentials(conn).pid)
    try:
        _check_holder(conn, path)
        _read_greeting(conn, path)  # a refusal raises here, with the holder's reason
        send_message(conn, {"op": "take"})
        more = True
        while more:
            message, fds = receive_message(conn, f"handoff socket {path!r}")
            more = _add_sockets(taken, message, fds)
    except (OSError, HandoffError) as exc:
        for _, sock in taken.sockets:
            sock.close()
        conn.close()
        if isinstance(exc, HandoffError):
            raise
        raise HandoffError(f"handoff from {path!r} failed: {exc}") from None
    return taken


def _read_greeting(conn: socket.socket, path: str) -> None:
    message, fds = receive_message(conn, f"handoff socket {path!r}")
    for fd in fds:
        os.close(fd)
    if message.get("op") != "hello":
        raise HandoffError(f"handoff socket {path!r} greeted with {message!r}, not hello")


def _check_holder(conn: socket.socket, path: str) -> None:
    uid = peer_credentials(conn).uid
    if uid not in (0, os.getuid()):
        raise HandoffError(f"handoff socket {path!r} is served by uid {uid}: {uid_refusal(uid)}")


def _add_sockets(taken: Taken, message: dict[str, Any], fds: list[int]) -> bool:
    """Wrap the fds of one ``fds`` message; return whether more messages follow."""
    try:
        if message.get("op") != "fds":
            raise HandoffError(f"pid {taken.holder_pid} answered {message!r} instead of sockets")
        names = message.get("names")
        if not isinstance(names, list) or len(names) != len(fds):
            raise HandoffError(f"pid {taken.holder_pid} sent {len(fds)} fds with names {names!r}")
    except HandoffError:
        for fd in fds:
            os.close(fd)
        raise
    if isinstance(message.get("pid"), int):
        taken.holder_pid = message["pid"]
    taken.sockets += [
        (str(name), socket.socket(fileno=fd)) for name, fd in zip(names, fds, strict=True)
    ]
    return bool(message.get("more"))
