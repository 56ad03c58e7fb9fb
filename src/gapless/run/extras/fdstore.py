"""systemd's fd store: the listeners are stored (gapless.systemd.fdstore) when
``$FDSTORE`` allows it, so that even ``systemctl restart`` keeps them.

Example::

    store = FdStore(environ, upstream, log)    # before the children's environ is copied
    ...
    store.store(listeners)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ...errors import NotifyError
from ...systemd.fdstore import fd_store_size, given_back_names, store_listeners
from ..config import Listener
from ..eventlog import EventLog
from ..upstream import Upstream
from . import Extra

__all__ = ["FdStore"]


class FdStore(Extra):
    """Args: the children's environment (``FDSTORE`` is taken out of it), what
    systemd is told (its address is systemd's NOTIFY_SOCKET), the event log."""

    def __init__(self, environ: dict[str, str], upstream: Upstream, log: EventLog) -> None:
        settings = {"FDSTORE": environ.pop("FDSTORE", ""), "NOTIFY_SOCKET": upstream.address}
        self._enabled = fd_store_size(settings) > 0
        self._given_back = given_back_names(environ, os.getpid())
        self._upstream = upstream
        self._log = log

    def store(self, listeners: Sequence[Listener]) -> None:
        """Store ``listeners`` with systemd if ``$FDSTORE`` allows it; a failure is a warning."""
        if not self._enabled:
            return
        named = [(item.name, item.sock) for item in listeners]
        try:
            store_listeners(named, self._upstream.address, self._given_back)
        except NotifyError as exc:
            self._log.event("warning", f"cannot keep the sockets in systemd's fd store: {exc}")
            return
        self._log.event("fdstore", f"kept {len(named)} listening socket(s) in systemd's fd store")
