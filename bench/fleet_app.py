"""The fleet's application: ``pid <N>`` in the body (the prober reads it) and the
release it belongs to in an ``X-App-Version`` header, so a deploy can be seen.

The version is read once, at import, from the file ``FLEET_VERSION_FILE`` names:
a new generation (``gapless reload``) or a new instance imports the app afresh
and so serves what the file says then, as a new release would.

    gapless serve fleet_app:asgi            # ASGI, through gapless serve
    gapless run -- gunicorn fleet_app:wsgi  # WSGI, gunicorn under gapless run
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

__all__ = ["VERSION", "asgi", "wsgi"]


def _read_version() -> str:
    path = os.environ.get("FLEET_VERSION_FILE")
    return Path(path).read_text().strip() if path else "0"


VERSION = _read_version()


def _body() -> bytes:
    return f"pid {os.getpid()} version {VERSION}\n".encode()


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = _body()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("X-App-Version", VERSION),
        ],
    )
    return [body]


async def asgi(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = _body()
    headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(body)).encode()),
        (b"x-app-version", VERSION.encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
