"""gapless: zero-downtime restarts for socket servers.

The listening sockets outlive every process that serves them: the next version
starts beside the current one with the same sockets (systemd's ``LISTEN_FDS``),
says when it is ready (``NOTIFY_SOCKET``, ``READY=1``), and only then does the
old one stop accepting and finish what it holds, by a hard deadline.

Invariants (each tested by name in tests/):

1. A listening socket is never closed by the last process that holds it while an
   upgrade is possible; unix socket paths are unlinked only at the final stop.
2. At most one successor is starting; a second request joins the first.
3. A process stops accepting only after its successor sent READY=1; never on a
   timer.
4. A failed successor (exit, timeout, bad command) changes nothing for clients:
   the running process keeps serving and the upgrade reports why it failed.
5. Deadlines are measured on ``time.monotonic()``; past the drain deadline the
   process exits whatever it still holds, and its process group is killed (a
   generation of ``gapless run``, a successor in library mode), workers included;
   a manager killed outright has its generations stopped by its watchdog.
6. Nothing sleeps to synchronise: every wait is on an event (a datagram, a
   pidfd, a pipe) with a timeout.
7. The manager's failure is never the service's (``gapless run``): an error in
   one handler (a control command, a notify datagram) drops that client or
   datagram only; an unexpected error in the manager's loop re-executes it in
   place with its pid, sockets and generations; only an explicit stop ends them.

Example, a server that upgrades itself on HUP or USR2::

    with gapless.Upgrader() as upgrader:
        sock = upgrader.listen("127.0.0.1:8000")
        ...                       # serve sock in a thread or an event loop
        upgrader.ready()
        upgrader.wait_stopping()  # a successor took over, or TERM arrived
        ...                       # stop accepting, finish requests in flight
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    AddressInUseError,
    AdoptError,
    BindError,
    GaplessError,
    HookError,
    InheritanceError,
    ListenError,
    ListenPermissionError,
    NotifyError,
    PidFileError,
    SignalsError,
    SuccessorExitedError,
    SuccessorSpawnError,
    SuccessorTimeoutError,
    UnixPathTooLongError,
    UpgradeError,
    UpgradeRefusedError,
)

# Imported eagerly: the client is what most generations need, and it is small.
from .systemd.notify import notify, ready
from .systemd.notify_receiver import Notification, NotifyReceiver

if TYPE_CHECKING:
    from .hooks import Hooks
    from .integrations.asyncio_server import AsyncioLife, serve_asyncio
    from .integrations.common import ServeOptions
    from .library.upgrader import DEFAULT_SIGNALS, Upgrader
    from .serving.api import serve
    from .sockets.addresses import Address, Bind, FdAddress, TcpAddress, UnixAddress, parse_bind
    from .sockets.listeners import adopt_listener, open_listener
    from .systemd.listen_fds import consume_listen_fds, listen_env

# The rest loads on first use: every generation a manager starts imports gapless,
# and a server that needs only the notify client should not pay for asyncio.
_LAZY = {
    "Address": "sockets.addresses",
    "Bind": "sockets.addresses",
    "FdAddress": "sockets.addresses",
    "TcpAddress": "sockets.addresses",
    "UnixAddress": "sockets.addresses",
    "parse_bind": "sockets.addresses",
    "Hooks": "hooks",
    "consume_listen_fds": "systemd.listen_fds",
    "listen_env": "systemd.listen_fds",
    "AsyncioLife": "integrations.asyncio_server",
    "serve_asyncio": "integrations.asyncio_server",
    "ServeOptions": "integrations.common",
    "adopt_listener": "sockets.listeners",
    "open_listener": "sockets.listeners",
    "serve": "serving.api",
    "DEFAULT_SIGNALS": "library.upgrader",
    "Upgrader": "library.upgrader",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gapless' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_SIGNALS",
    "Address",
    "AddressInUseError",
    "AdoptError",
    "AsyncioLife",
    "Bind",
    "BindError",
    "FdAddress",
    "GaplessError",
    "HookError",
    "Hooks",
    "InheritanceError",
    "ListenError",
    "ListenPermissionError",
    "Notification",
    "NotifyError",
    "NotifyReceiver",
    "PidFileError",
    "ServeOptions",
    "SignalsError",
    "SuccessorExitedError",
    "SuccessorSpawnError",
    "SuccessorTimeoutError",
    "TcpAddress",
    "UnixAddress",
    "UnixPathTooLongError",
    "UpgradeError",
    "UpgradeRefusedError",
    "Upgrader",
    "__version__",
    "adopt_listener",
    "consume_listen_fds",
    "listen_env",
    "notify",
    "open_listener",
    "parse_bind",
    "ready",
    "serve",
    "serve_asyncio",
]
