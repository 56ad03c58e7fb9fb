"""systemd's file descriptor store: listening sockets that outlive ``systemctl restart``.

A restart stops the whole service before starting it again: without help, the
listening sockets close and connections are refused in between. A service may
hand fds to systemd to keep (``sd_pid_notify_with_fds(3)``: a notify datagram
``FDSTORE=1`` and ``FDNAME=NAME`` carrying the fds over SCM_RIGHTS); at the next
start systemd passes them back as ``LISTEN_FDS`` with ``LISTEN_FDNAMES``, which
the manager already prefers over binding. Connections that arrive meanwhile
wait in the kernel's accept queue.

The unit must allow it (``FileDescriptorStoreMax=N``). systemd 254 and later
tell the service so in ``$FDSTORE``; gapless stores only when that variable is a
positive number (on older systemd, set ``Environment=FDSTORE=N`` yourself), so
that a unit without a store gets no warning per start.

Each start first drops the names it was given back (``FDSTOREREMOVE=1``), then
stores what it listens on now: a socket whose bind was removed from the command
line is not kept open by systemd for ever. Our own copies stay open meanwhile.

Example::

    store_listeners([("web", sock)], environ=os.environ, given_back=["web"])
"""

from __future__ import annotations

import array
import socket
from collections.abc import Mapping, Sequence

from ..errors import NotifyError
from .notify import format_message, notify_sockaddr

__all__ = ["fd_store_size", "given_back_names", "store_listeners"]

_DEFAULT_NAME = "stored"  # what systemd calls an fd stored without FDNAME


def fd_store_size(environ: Mapping[str, str]) -> int:
    """The store's capacity as ``$FDSTORE`` says; 0 when unset, invalid, or no
    ``NOTIFY_SOCKET`` to send to."""
    text = environ.get("FDSTORE", "")
    if not environ.get("NOTIFY_SOCKET") or not text.isascii() or not text.isdigit():
        return 0
    return int(text)


def given_back_names(environ: Mapping[str, str], pid: int) -> list[str]:
    """The names of the fds passed to process ``pid`` (``LISTEN_FDNAMES``), read
    before they are consumed; [] when they are not for ``pid``."""
    if environ.get("LISTEN_PID") != str(pid) or not environ.get("LISTEN_FDS"):
        return []
    return [name for name in environ.get("LISTEN_FDNAMES", "").split(":") if name]


def store_listeners(
    listeners: Sequence[tuple[str | None, socket.socket]],
    notify_socket: str,
    given_back: Sequence[str] = (),
) -> None:
    """Replace what the store holds under ``given_back`` names by ``listeners``.

    Args:
        listeners: ``(name, socket)``; an unnamed one is stored as ``stored``.
        notify_socket: systemd's ``NOTIFY_SOCKET``.
        given_back: the names systemd passed at this start (:func:`given_back_names`).

    Raises:
        NotifyError: the socket could not be reached or refused a datagram.
    """
    address = notify_sockaddr(notify_socket, "NOTIFY_SOCKET")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        for name in dict.fromkeys(given_back):
            message = format_message(fields={"FDSTOREREMOVE": "1", "FDNAME": name})
            _send(sock, address, message, [])
        for label, listener in listeners:
            message = format_message(fields={"FDSTORE": "1", "FDNAME": label or _DEFAULT_NAME})
            _send(sock, address, message, [listener.fileno()])


def _send(sock: socket.socket, address: str, message: bytes, fds: list[int]) -> None:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    try:
        sock.sendmsg([message], ancillary, 0, address)
    except OSError as exc:
        raise NotifyError(f"cannot store fds with systemd: {exc.strerror or exc}") from None
