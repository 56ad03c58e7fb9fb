"""An asyncio server in library mode: answers every line with its PID."""

import asyncio
import os
import sys

from gapless import Upgrader


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()
    writer.write(f"pid {os.getpid()}\n".encode())
    await writer.drain()
    writer.close()


async def main() -> None:
    with Upgrader() as upgrader:
        server = await asyncio.start_server(answer, sock=upgrader.listen(sys.argv[1]))
        upgrader.ready()
        await upgrader.wait_stopping_async()
        server.close()
        await server.wait_closed()


asyncio.run(main())
