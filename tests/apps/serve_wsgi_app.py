"""WSGI app for gapless serve tests: answers ``pid <PID>``; ``/slow?ms=N`` after N ms."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

BODY = f"pid {os.getpid()}".encode()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/slow":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        time.sleep(int(query.get("ms", ["0"])[0]) / 1000)  # the app's own work, not a sync
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]
