"""A ``websockets`` server under gapless through :func:`gapless.serve_asyncio`:
each client gets ``hello <pid>``; the drain closes every WebSocket with 1012.

    python serve_ws_asyncio.py [BIND]...
"""

from __future__ import annotations

import asyncio
import os
import sys

from websockets.asyncio.server import ServerConnection, serve

import gapless


async def handler(websocket: ServerConnection) -> None:
    await websocket.send(f"hello {os.getpid()}")
    async for _ in websocket:
        pass


async def main() -> None:
    async with gapless.serve_asyncio(bind=sys.argv[1:], drain_timeout=10) as life:
        sock = life.sockets[0]
        server = await serve(handler, sock=sock, backlog=life.backlog(sock))
        life.ready()
        await life.draining.wait()
        await life.drain_websockets(server)


if __name__ == "__main__":
    asyncio.run(main())
