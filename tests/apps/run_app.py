"""WSGI and ASGI apps for tests/run/test_run_servers.py: every answer is ``pid <PID>``.

``gunicorn run_app:wsgi``, ``uvicorn run_app:asgi``, ``hypercorn run_app:asgi``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any


def _body() -> bytes:
    return f"pid {os.getpid()}\n".encode()  # a gunicorn worker is not the process imported


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = _body()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = _body()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
