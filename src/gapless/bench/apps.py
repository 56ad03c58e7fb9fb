"""The applications the bench serves through the peer servers: one tiny answer each.

Every body is ``pid <N>``, naming the process that answered, so the bench sees a
new generation answer (the reload's "new ready" event for servers that tell
nothing else). Both apps read nothing and allocate little: what is measured is
the server and its reload, not the application.

Example::

    gunicorn --bind 127.0.0.1:8000 gapless.bench.apps:wsgi
    uvicorn --port 8000 gapless.bench.apps:asgi
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

__all__ = ["asgi", "wsgi"]


def _body() -> bytes:
    return f"pid {os.getpid()}\n".encode()


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A WSGI app answering ``pid <N>``."""
    body = _body()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    """An ASGI app answering ``pid <N>``; lifespan events are acknowledged."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = _body()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
