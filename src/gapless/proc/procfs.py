"""``/proc/<pid>/stat``, parsed in one place.

The second field, the command name, may hold spaces and parentheses; the
fields after its last ``)`` are fixed: state, ppid, pgrp, ... (proc(5)).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

__all__ = ["all_stats", "stat_fields"]


def stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields after the command name (``[state, ppid, pgrp, ...]``), or None
    when the process is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    fields = stat.rpartition(b")")[2].split()
    return fields if len(fields) > 2 else None


def all_stats() -> Iterator[tuple[int, list[bytes]]]:
    """``(pid, fields)`` of every process still readable, zombies included."""
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := stat_fields(name)) is not None:
            yield int(name), fields
