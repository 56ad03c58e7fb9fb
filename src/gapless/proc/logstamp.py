"""The fields every JSON log line starts with, for the manager and its watchdog alike.

Example::

    json.dumps({**stamp("warning"), "event": "killed", "message": "..."})
    # {"time": 1718000000.123, "ts": "2024-06-10T06:13:20.123Z", "level": "warning", ...}
"""

from __future__ import annotations

import datetime
import time
from typing import Any

__all__ = ["LEVELS", "stamp"]

LEVELS = ("info", "warning", "error")


def stamp(level: str) -> dict[str, Any]:
    """The time as seconds (kept for readers of earlier versions) and as ISO 8601 UTC
    with milliseconds, which log shippers parse without configuration; and the level."""
    now = time.time()
    moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    ts = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"time": round(now, 3), "ts": ts, "level": level}
