"""ASGI app for gapless serve tests: answers ``pid <PID>``.

``/slow?ms=N`` answers after N ms; ``/stream?ms=N`` sends its headers at once and
its body after N ms (so a client knows its request is in flight). A WebSocket
gets ``hello``, then ``restarting`` when gapless's drain starts. With
``SERVE_APP_MARKER=path`` the lifespan startup writes that file, after
``SERVE_APP_STARTUP_MS`` ms, so a test can see READY=1 came after it; with
``SERVE_APP_FAIL=1`` the lifespan startup fails.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

BODY = f"pid {os.getpid()}".encode()
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
        return
    while (await receive()).get("more_body"):
        pass
    query = parse_qs(scope["query_string"].decode())
    delay = int(query.get("ms", ["0"])[0]) / 1000
    start = {"type": "http.response.start", "status": 200, "headers": HEADERS}
    if scope["path"] == "/stream":
        await send(start)
        await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": BODY})
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(delay)
    await send(start)
    await send({"type": "http.response.body", "body": BODY})


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup" and os.environ.get("SERVE_APP_FAIL"):
            await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
            return
        if message["type"] == "lifespan.startup":
            marker = os.environ.get("SERVE_APP_MARKER")
            if marker:
                await asyncio.sleep(int(os.environ.get("SERVE_APP_STARTUP_MS", "0")) / 1000)
                Path(marker).write_text(str(os.getpid()))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "hello"})
    drain = (scope.get("extensions") or {}).get("gapless.drain")
    receiving = asyncio.ensure_future(receive())
    pending: set[asyncio.Future[Any]] = {receiving}
    if drain is not None:
        pending.add(asyncio.ensure_future(drain["started"].wait()))
    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    if receiving not in done:  # the drain started: tell the client, then let it be closed
        await send({"type": "websocket.send", "text": "restarting"})
    while (await receiving)["type"] != "websocket.disconnect":
        receiving = asyncio.ensure_future(receive())
