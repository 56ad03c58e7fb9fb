"""A server with no drain, for tests/test_testing.py: HTTP/1.1 keep-alive on the
socket it inherits (fd 3, ``LISTEN_FDS``), 20 ms of work over each answer, and on
SIGTERM an exit at once that cuts every request it holds, as a server without a
graceful shutdown does. ``gapless.testing.check_reloads`` must see those losses.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = f"pid {os.getpid()}".encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            await asyncio.sleep(0.02)  # the work a request takes: holds it in flight
            writer.write(head + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, sock=socket.socket(fileno=3))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, os._exit, 0)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
