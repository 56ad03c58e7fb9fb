"""Hooks for gapless serve tests: each appends ``<pid> <hook>`` to the file named
by ``SERVE_HOOKS_LOG``; ``before_upgrade`` refuses while ``<that file>.veto`` exists."""

from __future__ import annotations

import os
from pathlib import Path

LOG = Path(os.environ["SERVE_HOOKS_LOG"])


def _log(event: str) -> None:
    with LOG.open("a") as log:
        log.write(f"{os.getpid()} {event}\n")


def before_upgrade() -> None:
    if Path(f"{LOG}.veto").exists():
        raise RuntimeError("the migration check failed")
    _log("before_upgrade")


def on_ready() -> None:
    _log("on_ready")


def before_shutdown() -> None:
    _log("before_shutdown")


def after_shutdown() -> None:
    _log("after_shutdown")
