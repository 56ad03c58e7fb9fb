"""Web servers that drain without losing a request, for ``gapless serve``.

Handing the listening socket to the next generation is the easy half of a
restart; the old generation's drain is where servers lose requests. Measured:
uvicorn, hypercorn and aiohttp each lose one request per keep-alive connection
on SIGTERM, because they close idle keep-alive connections while clients are
already sending on them, and close connections accepted but not yet read with
no answer at all. Every integration here keeps the same contract instead:

1. Stop accepting by ``close()`` of the listening sockets, never ``shutdown()``
   (which breaks the socket for every process that shares it). Connections
   still queued in the kernel are the next generation's; connections this
   process already accepted are its own, even those its event loop has not yet
   handed to a protocol.
2. Every connection already accepted is served: a request already sent, or one
   arriving on it later, gets its response.
3. Every response started after the drain began says ``Connection: close``,
   and the connection is closed once it is sent: the client knows not to reuse
   it, so no request is written into a connection being closed.
4. An idle connection (a response sent with keep-alive before the drain, or
   accepted and never written to) is closed only the way steady-state
   keep-alive expiry closes it, and only if its receive queue is empty: a
   request that already arrived unseen is read and answered instead.
5. WebSocket handlers are told the drain started (an ASGI scope extension),
   get a grace to tell their clients, and the rest get close code 1012.
6. A hard deadline (``--drain-timeout``, 30 s by default): what remains then is
   cut, and the count is logged. The server's own graceful timeout is never
   relied on (uvicorn's is infinite by default, hypercorn's ignored on Python
   >= 3.12.1).

Modules: :mod:`.common` (options, the ASGI middleware, the receive-queue
check), :mod:`.drain` (closing listeners without loss, waiting on changes),
:mod:`.uvicorn` and :mod:`.uvicorn_http` (ASGI, the default), :mod:`.hypercorn`
(ASGI), :mod:`.granian` (ASGI on granian's Rust HTTP stack), :mod:`.aiohttp`
(aiohttp applications), :mod:`.wsgi` (WSGI applications on uvicorn's drain),
:mod:`.asyncio_server` (plain asyncio and ``websockets`` servers: a helper, the
drain is theirs). Each imports its server only when used: the core of gapless
has no dependencies, ``pip install gapless[serve]`` brings uvicorn,
``gapless[granian]`` granian; hypercorn and aiohttp users have theirs. The
runner that uses them is :mod:`gapless.serving.child`.

Example::

    from gapless.integrations.common import ServeOptions
    from gapless.integrations.uvicorn import serve_asgi

    report = serve_asgi(app, sockets, ServeOptions(drain_timeout=30.0))
    print(report.cut_connections)
"""

from __future__ import annotations
