"""What ``gapless run`` adds for restarts it does not drive itself (by a supervisor,
systemd or an orchestrator), each feature its own small object, off by default:

* :mod:`.handoff`: ``--handoff[=PATH]``, taking over from a running instance
  and handing over to the next one (with :mod:`.handoff_host` and :mod:`.front`);
* :mod:`.health`: ``--health-bind ADDRESS``, the readiness, liveness and metrics
  endpoint (with :mod:`.answers` and :mod:`.metrics`);
* :mod:`.shutdown_delay`: ``--shutdown-delay S``;
* :mod:`.fdstore`: the listeners kept in systemd's fd store.

The manager loops over them through :class:`Extra`. Where two interact, the
dependency is a constructor argument: the health endpoint asks the shutdown
delay and the handoff what to answer; the handoff lends the health socket.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EXEC_REFUSAL", "Extra"]

#: Why ``gapless upgrade`` refuses while a handoff socket is open.
EXEC_REFUSAL = (
    "--handoff sockets are not kept across an exec; "
    "restart through the supervisor instead (--handoff keeps every socket)"
)


class Extra:
    """What the manager's loop asks each feature; the defaults do nothing."""

    def wake_at(self) -> float | None:
        """When :meth:`tick` has something to do (monotonic); None: nothing."""
        return None

    def tick(self, now: float) -> None:
        """Carry out what is due at ``now``."""

    def status(self) -> dict[str, Any]:
        """Its fields of ``gapless status``'s ``restarts``."""
        return {}

    def upgrade_refusal(self) -> str | None:
        """Why ``gapless upgrade`` (an exec in place) cannot keep its sockets, or None."""
        return None

    def close(self) -> None:
        """At the manager's exit, in the order the manager holds them."""
