"""What the health endpoint answers, as bytes from bytes: no sockets here
(gapless.run.extras.health does the IO).

``/ready`` and ``/`` answer the state, ``/live`` 200, ``/metrics`` the Prometheus
text when there is one, any other path 404. Every answer is whole, with its
length, and closes the connection: a probe is one request.

Example::

    answer(b"GET /ready HTTP/1.1\\r\\n\\r\\n", "serving", None)
    # b"HTTP/1.1 200 OK\\r\\n...serving\\n"
"""

from __future__ import annotations

from collections.abc import Callable

from .metrics import CONTENT_TYPE

__all__ = ["PATHS", "STATES", "answer"]

#: The states and the HTTP status each one answers with.
STATES = {"starting": 503, "serving": 200, "draining": 503}
#: The paths answered besides ``/metrics``; ``/`` answers as ``/ready`` (probes deployed
#: before ``/ready`` existed ask ``/``).
PATHS = ("/", "/ready", "/live")
_REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}
_TEXT = "text/plain; charset=utf-8"


def answer(request: bytes, state: str, metrics: Callable[[str], str] | None) -> bytes:
    """The whole HTTP/1.1 answer to ``request`` in ``state``; ``metrics`` renders
    ``/metrics`` for a state (None: that path is 404)."""
    path = _path(request)
    if path in ("/", "/ready"):
        return _answer(request, STATES[state], f"{state}\n", _TEXT)
    if path == "/live":
        return _answer(request, 200, "live\n", _TEXT)  # answered from the loop: it runs
    if path == "/metrics" and metrics is not None:
        return _answer(request, 200, metrics(state), CONTENT_TYPE)
    paths = [*PATHS, *(["/metrics"] if metrics is not None else [])]
    return _answer(request, 404, f"no {path[:64]!r} here; try {', '.join(paths)}\n", _TEXT)


def _answer(request: bytes, code: int, text: str, content_type: str) -> bytes:
    # Sent in one non-blocking send: the metrics text (a few KiB) fits any socket buffer.
    body = text.encode()
    head = (
        f"HTTP/1.1 {code} {_REASONS[code]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head if request.startswith(b"HEAD ") else head + body


def _path(request: bytes) -> str:
    """The path of the request line, without its query; ``/`` for a request line
    that cannot be read (a probe cut short is answered as ``/`` always was)."""
    parts = request.split(b"\n", 1)[0].split()
    if len(parts) < 2 or not parts[1].startswith(b"/"):
        return "/"
    return parts[1].split(b"?", 1)[0].decode(errors="replace")
