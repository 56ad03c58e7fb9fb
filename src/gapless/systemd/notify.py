"""sd_notify(3): readiness and status datagrams, the client side and the format.

A child tells its manager how it is doing by sending one datagram of
``KEY=VALUE`` lines to the unix socket named by ``NOTIFY_SOCKET``; the kernel
attaches the sender's pid, uid and gid. This module speaks exactly systemd's
protocol, so ``systemd-notify --ready``, libsystemd and any sd_notify client work
with a gapless manager, and a gapless program works under systemd.

Example (the receiving side is :mod:`gapless.systemd.notify_receiver`)::

    notify(ready=True, status="serving")   # False when NOTIFY_SOCKET is unset

Messages are parsed strictly (see :func:`parse_message`). A duplicate key is
rejected rather than resolved: systemd's own readers take the first ``STATUS=``
(``strv_find_startswith``) while a dict keeps the last, so any choice would
disagree with someone; a sender that repeats a key has a bug worth seeing.
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from collections.abc import Mapping

from ..errors import NotifyError

__all__ = [
    "MAX_MESSAGE",
    "format_message",
    "notify",
    "parse_message",
    "ready",
]

#: Largest datagram accepted, in bytes: systemd's own receive buffer
#: (NOTIFY_BUFFER_MAX, i.e. PIPE_BUF). Anything longer is refused, not truncated.
MAX_MESSAGE = 4096

_KEY = re.compile(r"[A-Z][A-Z0-9_]*")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def notify_sockaddr(address: str, what: str) -> str:
    """The kernel's form of "/path" or "@abstract" (a leading NUL)."""
    if not address.startswith(("/", "@")):
        raise NotifyError(f"{what} {address!r} is not an absolute path or @abstract name")
    return "\0" + address[1:] if address.startswith("@") else address


def format_message(
    *,
    ready: bool = False,
    reloading: bool = False,
    stopping: bool = False,
    status: str | None = None,
    mainpid: int | None = None,
    extend_timeout: float | None = None,
    fields: Mapping[str, str] | None = None,
) -> bytes:
    """Build one notification datagram; the arguments are those of :func:`notify`.

    Returns:
        ``KEY=VALUE`` lines joined by ``\\n``, UTF-8, which :func:`parse_message` accepts.

    Raises:
        NotifyError: a bad value, a key given twice, nothing to send, or a message
            longer than :data:`MAX_MESSAGE`.
    """
    pairs: list[tuple[str, str]] = []
    if ready:
        pairs.append(("READY", "1"))
    if reloading:
        # Type=notify-reload requires the reload's start time on CLOCK_MONOTONIC.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        pairs += [("RELOADING", "1"), ("MONOTONIC_USEC", str(usec))]
    if stopping:
        pairs.append(("STOPPING", "1"))
    if status is not None:
        if "\n" in status:
            raise NotifyError(f"status {_short(status)} has a newline; send a single line")
        pairs.append(("STATUS", status))
    if mainpid is not None:
        if isinstance(mainpid, bool) or not isinstance(mainpid, int) or mainpid <= 0:
            raise NotifyError(f"mainpid {_short(mainpid)} is not a positive pid")
        pairs.append(("MAINPID", str(mainpid)))
    if extend_timeout is not None:
        if not math.isfinite(extend_timeout) or extend_timeout < 0:
            raise NotifyError(f"extend_timeout {extend_timeout!r} must be finite seconds >= 0")
        pairs.append(("EXTEND_TIMEOUT_USEC", str(int(extend_timeout * 1_000_000))))
    pairs += (fields or {}).items()
    return _encode(pairs)


def _encode(pairs: list[tuple[str, str]]) -> bytes:
    if not pairs:
        raise NotifyError("empty notification; set at least one field (e.g. ready=True)")
    seen: set[str] = set()
    for key, value in pairs:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise NotifyError(f"field name {_short(key)} is invalid; use [A-Z][A-Z0-9_]*")
        if key in seen:
            raise NotifyError(f"field {key} given twice; send each key once")
        if not isinstance(value, str) or "\n" in value or "\0" in value:
            raise NotifyError(f"field {key}={_short(value)} must be a str without newline or NUL")
        seen.add(key)
    try:
        data = "\n".join(f"{key}={value}" for key, value in pairs).encode()
    except UnicodeEncodeError as exc:
        raise NotifyError(f"notification is not valid UTF-8: {exc.reason}") from None
    if len(data) > MAX_MESSAGE:
        raise NotifyError(f"notification is {len(data)} bytes, over {MAX_MESSAGE}; shorten it")
    return data


def parse_message(data: bytes) -> dict[str, str]:
    """Parse one notification datagram, strictly.

    A message is UTF-8 ``KEY=VALUE`` lines separated by ``\\n`` (one trailing
    newline allowed, no empty line), each KEY matching ``[A-Z][A-Z0-9_]*`` and
    given once, no NUL byte anywhere, at most :data:`MAX_MESSAGE` bytes.

    Args:
        data: the datagram's payload.

    Returns:
        The fields, in message order.

    Raises:
        NotifyError: naming the first thing wrong with the message.
    """
    if len(data) > MAX_MESSAGE:
        raise NotifyError(f"notification is {len(data)} bytes, over the {MAX_MESSAGE} limit")
    if not data:
        raise NotifyError("notification is empty; send at least one KEY=VALUE line")
    if b"\0" in data:
        raise NotifyError(f"notification {_short(data)} contains a NUL byte")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise NotifyError(f"notification {_short(data)} is not UTF-8") from None
    lines = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    fields: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep or not _KEY.fullmatch(key):
            raise NotifyError(f"notification line {_short(line)} is not KEY=VALUE")
        if key in fields:
            raise NotifyError(f"notification repeats key {key}")
        fields[key] = value
    return fields


def notify(
    *,
    ready: bool = False,
    reloading: bool = False,
    stopping: bool = False,
    status: str | None = None,
    mainpid: int | None = None,
    extend_timeout: float | None = None,
    fields: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    block: bool = True,
) -> bool:
    """Send one notification to the socket named by ``NOTIFY_SOCKET``, as sd_notify(3).

    ``block=False`` is for a process that must never stall on its supervisor (a
    manager): the kernel queues only ``net.unix.max_dgram_qlen`` datagrams (10 by
    default) for a reader that does not read, and then the message is dropped
    with a :class:`NotifyError` instead of waiting.

    Args:
        ready: send ``READY=1``: start-up (or a reload) is complete.
        reloading: send ``RELOADING=1`` with ``MONOTONIC_USEC=`` (now, CLOCK_MONOTONIC).
        stopping: send ``STOPPING=1``.
        status: one line of free-form status text (``STATUS=``).
        mainpid: the service's main pid (``MAINPID=``).
        extend_timeout: seconds to extend the current timeout by (``EXTEND_TIMEOUT_USEC=``).
        fields: further ``KEY=VALUE`` pairs.
        environ: where to read ``NOTIFY_SOCKET``; defaults to ``os.environ``.

    Returns:
        True if sent, False if ``NOTIFY_SOCKET`` is unset or empty (not supervised).

    Raises:
        NotifyError: a bad argument (checked even when unsupervised), a malformed
            ``NOTIFY_SOCKET``, or the socket could not be reached.
    """
    message = format_message(
        ready=ready,
        reloading=reloading,
        stopping=stopping,
        status=status,
        mainpid=mainpid,
        extend_timeout=extend_timeout,
        fields=fields,
    )
    target = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not target:
        return False
    address = notify_sockaddr(target, "NOTIFY_SOCKET")
    # A fresh socket per message, as libsystemd: no state survives a fork or an exec.
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, 0 if block else socket.MSG_DONTWAIT, address)
    except BlockingIOError:
        raise NotifyError(
            f"NOTIFY_SOCKET={target!r} is not being read (its queue is full); message dropped"
        ) from None
    except OSError as exc:
        raise NotifyError(
            f"cannot send to NOTIFY_SOCKET={target!r}: {exc.strerror or exc}"
        ) from None
    return True


def ready(status: str | None = None) -> bool:
    """Tell the manager this process is ready: ``READY=1`` and, if given, ``STATUS=``.

    Returns:
        As :func:`notify`: False when ``NOTIFY_SOCKET`` is unset.

    Raises:
        NotifyError: as :func:`notify`.
    """
    return notify(ready=True, status=status)
