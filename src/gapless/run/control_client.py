"""Calling a ``gapless run`` manager: where its control socket is, and the protocol.

A client sends one request per line, ``{"v": 1, "cmd": "reload"}``; the manager
answers with any number of progress lines ``{"v": 1, "progress": "..."}`` and
then one final line ``{"v": 1, "ok": true, ...}`` or ``{"v": 1, "ok": false,
"error": "..."}`` (the server side: gapless.run.control).

Where the socket lives, unless ``--control PATH`` says otherwise: in
``$XDG_RUNTIME_DIR/gapless/``, else ``/run/gapless/`` for root, else
``/tmp/gapless-<uid>/``, named after the working directory (its base name and a
hash of its full path). So ``gapless reload`` run in the directory where
``gapless run`` was started finds that manager with no flag; a second manager
in the same directory needs its own ``--control``.

Example::

    >>> call(default_control_path(), "status")          # doctest: +SKIP
    {'v': 1, 'ok': True, 'generations': [...], ...}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import stat
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import ControlError, NoManagerError

__all__ = [
    "PROTOCOL_VERSION",
    "Message",
    "call",
    "control_directory",
    "default_control_path",
    "ensure_private_directory",
    "error",
    "progress",
    "reply",
]

PROTOCOL_VERSION = 1

Message = dict[str, Any]


def control_directory(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """The per-user directory for default control sockets (see the module docstring)."""
    env = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/"):
        return os.path.join(runtime, "gapless")
    return "/run/gapless" if uid == 0 else f"/tmp/gapless-{uid}"


def default_control_path(
    cwd: str | None = None, environ: Mapping[str, str] | None = None, uid: int | None = None
) -> str:
    """The control socket of the manager started in ``cwd`` (default: this one).

    Args:
        cwd: the working directory the name is derived from.
        environ: where to read ``XDG_RUNTIME_DIR``.
        uid: the user whose runtime directory is used.

    Returns:
        e.g. ``/run/user/1000/gapless/myapp-3f2a9c81d0e4.sock``.
    """
    where = os.path.realpath(os.getcwd() if cwd is None else cwd)
    digest = hashlib.sha256(os.fsencode(where)).hexdigest()[:12]
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(where) or "root")[:40]
    return os.path.join(control_directory(environ, uid), f"{base}-{digest}.sock")


def ensure_private_directory(path: str) -> None:
    """Create ``path`` as a 0700 directory, or check that it is one of ours.

    Raises:
        ControlError: it cannot be created, or belongs to another user.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ControlError(
            f"cannot create control directory {path!r}: {exc.strerror}; pass --control PATH"
        ) from exc
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ControlError(
            f"control directory {path!r} is not a directory owned by uid {os.getuid()}; "
            "remove it or pass --control PATH"
        )
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)


def reply(ok: bool, **fields: Any) -> Message:
    """A final answer: ``{"v": 1, "ok": ok, **fields}``."""
    return {"v": PROTOCOL_VERSION, "ok": ok, **fields}


def error(message: str, **fields: Any) -> Message:
    return reply(False, error=message, **fields)


def progress(message: str, **fields: Any) -> Message:
    return {"v": PROTOCOL_VERSION, "progress": message, **fields}


def call(
    path: str,
    cmd: str,
    *,
    on_progress: Callable[[str], None] | None = None,
    timeout: float | None = None,
    **fields: Any,
) -> Message:
    """Send one command to the manager at ``path`` and return its final answer.

    Args:
        path: the control socket.
        cmd: e.g. ``"reload"``, ``"status"``, ``"stop"``.
        on_progress: called with each progress line before the answer.
        timeout: seconds to wait for each line; None waits as long as it takes.
        fields: further request fields.

    Returns:
        The final message; check its ``"ok"``.

    Raises:
        NoManagerError: nothing listens at ``path``.
        ControlError: permission denied, a broken answer, or the manager went away.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        _connect(sock, path, timeout)
        sock.settimeout(timeout)
        request = {"v": PROTOCOL_VERSION, "cmd": cmd, **fields}
        with sock.makefile("rb") as lines:
            # A refused peer is answered and dropped at once: read that answer even
            # when the request could not be sent.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(json.dumps(request).encode() + b"\n")
            try:
                answer = _read_answer(lines, on_progress)
            except (OSError, ValueError) as exc:
                raise ControlError(f"broken answer from the manager at {path}: {exc}") from None
    if answer is None:
        raise ControlError(f"the manager at {path} closed the connection before answering {cmd!r}")
    return answer


def _connect(sock: socket.socket, path: str, timeout: float | None) -> None:
    """Connect in blocking mode: a unix socket's non-blocking connect fails at once
    (EAGAIN) while the listener's backlog is full; a blocking one waits for room,
    up to ``timeout`` (SO_SNDTIMEO bounds a blocking connect)."""
    if timeout is not None:
        seconds = max(timeout, 0.001)
        timeval = struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        raise NoManagerError(
            f"no gapless manager at {path}: start one with gapless run, or pass --control"
        ) from None
    except BlockingIOError:
        raise ControlError(
            f"the manager at {path} accepted no connection within {timeout or 0:g} s "
            "(its backlog is full); retry"
        ) from None
    except OSError as exc:
        raise ControlError(f"cannot reach the manager at {path}: {exc.strerror}") from None
    if timeout is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 0))


def _read_answer(
    lines: Iterable[bytes], on_progress: Callable[[str], None] | None
) -> Message | None:
    """Pass progress lines on; return the final one, or None at EOF before it."""
    for line in lines:
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError(f"{line[:60]!r} is not a JSON object")
        if "progress" not in message:
            return message
        if on_progress is not None:
            on_progress(str(message["progress"]))
    return None
