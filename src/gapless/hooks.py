"""Callbacks run at the points of a process's life that servers care about.

Example::

    upgrader.hooks.before_upgrade.append(lambda: log.info("flushing caches"))
    upgrader.hooks.after_upgrade.append(lambda pid: log.info("successor %d serves", pid))

``before_upgrade`` may veto an upgrade by raising: the upgrade fails with
:class:`~gapless.errors.HookError` and the process keeps serving. An exception in
any other hook is logged and does not stop what follows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import HookError

__all__ = ["HOOK_NAMES", "Hooks"]

log = logging.getLogger("gapless")

HOOK_NAMES = ("before_upgrade", "after_upgrade", "on_ready", "before_shutdown", "after_shutdown")

Hook = Callable[..., Any]


@dataclass
class Hooks:
    before_upgrade: list[Hook] = field(default_factory=list)
    """Before the successor starts; raising vetoes the upgrade."""
    after_upgrade: list[Hook] = field(default_factory=list)
    """Once the successor is ready; called with its PID."""
    on_ready: list[Hook] = field(default_factory=list)
    """Once this process has reported itself ready."""
    before_shutdown: list[Hook] = field(default_factory=list)
    """When this process is told to stop accepting (upgrade done, or TERM)."""
    after_shutdown: list[Hook] = field(default_factory=list)
    """After the listeners are closed, just before the process ends."""

    def run(self, name: str, *args: object) -> None:
        """Run the hooks called ``name`` in order.

        Raises:
            HookError: a ``before_upgrade`` hook raised (the cause is chained).
        """
        for hook in getattr(self, name):
            try:
                hook(*args)
            except Exception as exc:
                if name == "before_upgrade":
                    raise HookError(f"before_upgrade hook {_name(hook)} refused: {exc}") from exc
                log.exception("%s hook %s failed", name, _name(hook))


def _name(hook: Hook) -> str:
    return getattr(hook, "__qualname__", repr(hook))
