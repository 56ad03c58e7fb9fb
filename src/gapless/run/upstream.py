"""What the manager tells its own supervisor (systemd) through ``NOTIFY_SOCKET``.

Under ``Type=notify`` or ``Type=notify-reload`` the manager reports, as sd_notify(3)
asks: ``READY=1`` once its first generation serves; ``RELOADING=1`` with
``MONOTONIC_USEC`` for every reload request (systemd matches the time against the
moment it sent SIGHUP, so a request that joins a running reload is answered
again), then ``READY=1`` when no reload is under way any more; ``STOPPING=1``;
and a ``STATUS=`` line whenever the summary of the generations changes. Without
``NOTIFY_SOCKET`` every call is a no-op.

Example::

    upstream = Upstream(os.environ.get("NOTIFY_SOCKET", ""), log)
    upstream.update(serving=True, reloading=False, status="generation 1 active")
"""

from __future__ import annotations

from typing import Any

from ..errors import NotifyError
from ..systemd.notify import notify
from .eventlog import EventLog

__all__ = ["Upstream"]


class Upstream:
    """Tracks what systemd was told, so each state is sent once.

    Args:
        address: the manager's own ``NOTIFY_SOCKET``; empty for none.
        log: where a failure to notify is logged (it is never fatal).
    """

    def __init__(self, address: str, log: EventLog) -> None:
        self.address = address
        self._log = log
        self._state = "starting"
        self._status = ""

    def export(self) -> dict[str, str]:
        """What a manager re-executing in place hands over (see gapless.run.reexec)."""
        return {"state": self._state, "status": self._status}

    def restore(self, exported: dict[str, str]) -> None:
        self._state = exported["state"]
        self._status = exported["status"]

    def reload_requested(self) -> None:
        """A reload was asked for; only once the manager served may it say RELOADING."""
        if self._state in ("ready", "reloading"):
            self._state = "reloading"
            self._send(reloading=True)

    def stopping(self) -> None:
        if self._state != "stopping":
            self._state = "stopping"
            self._send(stopping=True)

    def update(self, *, serving: bool, reloading: bool, status: str) -> None:
        """After each batch of events: READY=1 when serving and no reload is under
        way, and STATUS= when the summary changed."""
        ready = serving and not reloading and self._state in ("starting", "reloading")
        if ready:
            self._state = "ready"
        if ready or status != self._status:
            self._status = status
            self._send(ready=ready, status=status)

    def _send(self, **fields: Any) -> None:
        if not self.address:
            return
        try:
            # Never block: a supervisor that stops reading must not stall the manager.
            notify(**fields, environ={"NOTIFY_SOCKET": self.address}, block=False)
        except NotifyError as exc:
            self._log.event("warning", f"cannot notify the supervisor: {exc}")
