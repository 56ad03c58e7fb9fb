"""A second ASGI app for gapless serve tests, for its own bind: answers ``admin <PID>``."""

from __future__ import annotations

import os
from typing import Any

BODY = f"admin {os.getpid()}".encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return  # no lifespan
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})
