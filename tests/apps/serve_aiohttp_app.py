"""aiohttp app for gapless serve tests, the same routes as serve_app.py: answers
``pid <PID>``; ``/slow?ms=N`` after N ms; ``/stream?ms=N`` sends its headers at
once and its body after N ms; ``/ws`` says ``hello``, then ``restarting`` when
gapless's drain starts (``app[DRAIN_KEY]``). ``on_startup`` writes the file
``SERVE_APP_MARKER`` after ``SERVE_APP_STARTUP_MS`` ms, as serve_app.py's lifespan."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aiohttp import web

from gapless.integrations.aiohttp import DRAIN_KEY

BODY = f"pid {os.getpid()}".encode()


async def index(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="text/plain")


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(int(request.query.get("ms", "0")) / 1000)  # the app's own work
    return web.Response(body=BODY, content_type="text/plain")


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
    response.content_type = "text/plain"
    await response.prepare(request)
    await asyncio.sleep(int(request.query.get("ms", "0")) / 1000)
    await response.write(BODY)
    await response.write_eof()
    return response


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str("hello")
    drain = request.app[DRAIN_KEY]
    receiving = asyncio.ensure_future(ws.receive())
    draining = asyncio.ensure_future(drain.wait())
    done, _ = await asyncio.wait({receiving, draining}, return_when=asyncio.FIRST_COMPLETED)
    if receiving not in done:
        await ws.send_str("restarting")
    await receiving
    return ws


async def on_startup(app: web.Application) -> None:
    marker = os.environ.get("SERVE_APP_MARKER")
    if marker:
        await asyncio.sleep(int(os.environ.get("SERVE_APP_STARTUP_MS", "0")) / 1000)
        Path(marker).write_text(str(os.getpid()))


app = web.Application()
app.on_startup.append(on_startup)
app.add_routes(
    [
        web.get("/", index),
        web.get("/slow", slow),
        web.get("/stream", stream),
        web.get("/ws", websocket),
    ]
)
