"""WSGI applications (Flask, Django, Bottle...) with the same drain as ASGI ones.

The server: uvicorn's HTTP protocols, driving the application through a2wsgi's
``WSGIMiddleware`` on a thread pool (``--threads``, 10 by default): each request
runs in a worker thread, as on a threaded WSGI server, and its response is
streamed back by the event loop.

Why not cheroot or gunicorn's gthread worker: what loses requests in a restart
is the connection handling (which connection to close, when, with which
header), not the thread pool. Putting WSGI on the connection layer of
:mod:`.uvicorn` gives it the drain already proven there, rule for rule,
instead of a second implementation of every rule in a second server, to be
proven again. a2wsgi is small (about 500 lines), typed, maintained, and is the
replacement uvicorn itself recommends for its deprecated WSGI interface.

Example::

    report = serve_wsgi(flask_app, sockets, ServeOptions(threads=16))
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ServeError
from .common import ASGIApp, DrainReport, ServeOptions
from .uvicorn import serve_asgi

__all__ = ["serve_wsgi", "wsgi_to_asgi"]


def serve_wsgi(
    app: Callable[..., Any],
    sockets: Sequence[socket.socket],
    options: ServeOptions,
    *,
    on_ready: Callable[[], object] | None = None,
    on_drain: Callable[[], object] | None = None,
) -> DrainReport:
    """Serve a WSGI ``app`` on ``sockets`` until SIGTERM or SIGINT, then drain.

    Args:
        app: a WSGI application, ``app(environ, start_response)``.
        sockets: listening sockets, served all at once.
        options: the settings; ``threads`` sizes the worker pool.
        on_ready: called once every socket is being served.
        on_drain: called once the listeners are closed and the drain began.

    Returns:
        How the drain ended.

    Raises:
        ServeError: a2wsgi is not installed, or ``threads`` is below 1.
    """
    asgi = wsgi_to_asgi(app, options.threads)
    return serve_asgi(asgi, sockets, options, on_ready=on_ready, on_drain=on_drain)


def wsgi_to_asgi(app: Callable[..., Any], threads: int) -> ASGIApp:
    """The WSGI ``app`` as an ASGI application running it on ``threads`` threads.

    Raises:
        ServeError: a2wsgi is not installed, or ``threads`` is below 1.
    """
    if importlib.util.find_spec("a2wsgi") is None:
        raise ServeError("WSGI needs a2wsgi, which is not installed: pip install gapless[serve]")
    if threads < 1:
        raise ServeError(f"invalid threads {threads}: give at least 1")
    from a2wsgi import WSGIMiddleware

    asgi: ASGIApp = WSGIMiddleware(app, workers=threads)  # type: ignore[assignment]
    return asgi
