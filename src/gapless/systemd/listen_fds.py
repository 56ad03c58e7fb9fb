"""systemd's socket-passing protocol (sd_listen_fds(3)), both ends, and matching.

A process started with listening sockets finds them on fds 3, 4, ... and three
environment variables describe them: ``LISTEN_FDS`` (how many), ``LISTEN_PID``
(the process they are for: a variable inherited by a grandchild is not for it)
and ``LISTEN_FDNAMES`` (colon-separated names, ``unknown`` for none). gapless
speaks exactly this protocol, so a gapless program runs unchanged under systemd
socket activation and any systemd-aware server runs unchanged under gapless.

Parsing is strict: a malformed variable is an error, never a silent "no
sockets", because a server that quietly opens fresh sockets instead of the
inherited ones drops every connection queued on them.

On an upgrade, :func:`match_binds` decides which inherited socket serves which
requested bind: by name first (so a ``web=:0`` bind keeps its random port), then
by address.

Example::

    >>> env = {"LISTEN_PID": "42", **listen_env(["web", None])}
    >>> read_listen_fds(env, pid=42)
    [InheritedFd(fd=3, name='web'), InheritedFd(fd=4, name=None)]
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from ..errors import AdoptError, InheritanceError
from ..sockets.addresses import Address, Bind, FdAddress, TcpAddress, UnixAddress
from ..sockets.listeners import adopt_listener

__all__ = [
    "SD_LISTEN_FDS_START",
    "InheritedFd",
    "MatchPlan",
    "consume_listen_fds",
    "listen_env",
    "match_binds",
    "read_listen_fds",
]

SD_LISTEN_FDS_START = 3
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_MAX_FDS = 4096  # far above any real count; larger is garbage, not a request
_MAX_PID = 2**31 - 1  # pid_t
_MAX_NAME = 255  # systemd's FDNAME_MAX
# No sign, no spaces, no leading zero (which C's strtol with base 0 reads as octal).
_DECIMAL = re.compile(r"[1-9][0-9]{0,9}")
_NAME = re.compile(r"[ -9;-~]{1,255}")  # printable ASCII except ':'


@dataclass(frozen=True)
class InheritedFd:
    """One inherited socket: its fd and its ``LISTEN_FDNAMES`` entry, if any."""

    fd: int
    name: str | None


def read_listen_fds(environ: Mapping[str, str], pid: int) -> list[InheritedFd]:
    """Read the ``LISTEN_*`` variables as sd_listen_fds(3) does, without side effects.

    Args:
        environ: the environment, e.g. ``os.environ``.
        pid: this process's id; the fds are ours only if ``LISTEN_PID`` equals it.

    Returns:
        The inherited fds in order from 3, or ``[]`` when ``LISTEN_PID`` or
        ``LISTEN_FDS`` is absent or ``LISTEN_PID`` names another process. A name
        is ``None`` when ``LISTEN_FDNAMES`` is absent or the entry is empty or
        ``unknown``.

    Raises:
        InheritanceError: ``LISTEN_PID`` or ``LISTEN_FDS`` is not a plain positive
            decimal in range, or ``LISTEN_FDNAMES`` has another count of entries.
    """
    pid_text = environ.get("LISTEN_PID")
    if pid_text is None:
        return []
    if _parse_positive("LISTEN_PID", pid_text, _MAX_PID, "a process id") != pid:
        return []
    fds_text = environ.get("LISTEN_FDS")
    if fds_text is None:
        return []
    count = _parse_positive("LISTEN_FDS", fds_text, _MAX_FDS, "a count of file descriptors")
    names = _parse_names(environ.get("LISTEN_FDNAMES"), count)
    return [InheritedFd(SD_LISTEN_FDS_START + i, name) for i, name in enumerate(names)]


def consume_listen_fds(
    environ: MutableMapping[str, str] | None = None, pid: int | None = None
) -> list[tuple[str | None, socket.socket]]:
    """Take the sockets passed by systemd or a gapless manager, as sd_listen_fds(1).

    The ``LISTEN_*`` variables are removed from ``environ`` in every case, even
    when they are malformed or for another process, so that no child of this
    process mistakes them for its own. Every inherited fd is made close-on-exec
    before any is checked, so none leaks into a child.

    If one fd is not a listening stream socket, nothing is closed: the sockets
    already adopted are detached back to bare fds and :class:`AdoptError` is
    raised, leaving the fd table as it was.

    Args:
        environ: defaults to ``os.environ`` (then ``unsetenv`` is called too).
        pid: defaults to ``os.getpid()``.

    Returns:
        ``(name, socket)`` pairs in fd order; ``[]`` when nothing was passed.

    Raises:
        InheritanceError: the variables are malformed.
        AdoptError: an inherited fd is not open or not a listening stream socket.
    """
    env = os.environ if environ is None else environ
    try:
        inherited = read_listen_fds(env, os.getpid() if pid is None else pid)
    finally:
        for variable in _VARIABLES:
            env.pop(variable, None)
    for item in inherited:
        with contextlib.suppress(OSError):  # not open: adopt_listener below says so
            os.set_inheritable(item.fd, False)
    adopted: list[tuple[str | None, socket.socket]] = []
    try:
        for item in inherited:
            adopted.append((item.name, adopt_listener(item.fd)))
    except AdoptError as exc:
        for _, sock in adopted:
            sock.detach()
        raise AdoptError(f"LISTEN_FDS={len(inherited)}: {exc}") from exc
    return adopted


def listen_env(names: Sequence[str | None]) -> dict[str, str]:
    """The ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` for a child given these sockets.

    The spawner puts the sockets on fds 3, 4, ... in this order, removes any
    ``LISTEN_*`` it inherited from the child's environment, and sets
    ``LISTEN_PID`` to the exec'd child's pid (not known here).

    Args:
        names: one entry per socket; ``None`` for an unnamed one (``unknown``).

    Returns:
        The two variables, or ``{}`` for no sockets (systemd rejects
        ``LISTEN_FDS=0``).

    Raises:
        InheritanceError: a name is empty, longer than 255, contains ``:`` or a
            non-printable or non-ASCII character, or there are over 4096 sockets.
    """
    if len(names) > _MAX_FDS:
        raise InheritanceError(f"cannot pass {len(names)} sockets: the limit is {_MAX_FDS}")
    for name in names:
        if name is not None and not _NAME.fullmatch(name):
            raise InheritanceError(
                f"invalid socket name {name!r}: use 1-{_MAX_NAME} printable ASCII "
                "characters without ':', or None for no name"
            )
    if not names:
        return {}
    entries = ["unknown" if name is None else name for name in names]
    return {"LISTEN_FDS": str(len(names)), "LISTEN_FDNAMES": ":".join(entries)}


@dataclass(frozen=True)
class MatchPlan:
    """Which inherited sockets serve which binds, by index into each sequence."""

    reuse: dict[int, int]  # bind index -> inherited index
    open: list[int]  # bind indexes to open anew
    close: list[int]  # inherited indexes no longer requested


def match_binds(
    binds: Sequence[Bind], inherited: Sequence[tuple[str | None, Address]]
) -> MatchPlan:
    """Decide which inherited socket, if any, serves each requested bind.

    Three passes, each inherited socket used at most once:

    1. by name: a named bind takes the socket of that name if its actual address
       fits the request (same kind; port 0 or the same port; a host name, or the
       same IP; the same unix path or abstract name);
    2. by address: an unmatched bind takes a socket at exactly its address (same
       nonzero port and IP, same unix path);
    3. a bind by host name (``localhost:8000``) takes a socket with its nonzero
       port and family: resolving the name needs DNS, and opening the port anew
       would fail anyway while the inherited socket holds it.

    An ``fd://N`` bind never matches (its fd is adopted as is). A bind whose
    port changed opens the new port, and the socket on the old one is closed.

    Args:
        binds: the requested binds, in order.
        inherited: ``(name, actual address)`` of each inherited socket, e.g.
            from :func:`consume_listen_fds` and
            :func:`gapless.sockets.listeners.listener_address`.

    Returns:
        The plan; ``open`` and ``close`` are in ascending order.
    """
    reuse: dict[int, int] = {}
    for fits in (_fits_by_name, _fits_exactly, _fits_host_name):
        for i, bind in enumerate(binds):
            if i in reuse or isinstance(bind.address, FdAddress):
                continue
            for j, (name, actual) in enumerate(inherited):
                if j not in reuse.values() and fits(bind, name, actual):
                    reuse[i] = j
                    break
    return MatchPlan(
        reuse=dict(sorted(reuse.items())),
        open=[i for i in range(len(binds)) if i not in reuse],
        close=sorted(set(range(len(inherited))) - set(reuse.values())),
    )


def _parse_positive(variable: str, text: str, limit: int, what: str) -> int:
    if not _DECIMAL.fullmatch(text) or int(text) > limit:
        raise InheritanceError(
            f"invalid {variable}={text!r}: expected {what} from 1 to {limit}; "
            "fix or unset it where this process is started"
        )
    return int(text)


def _parse_names(text: str | None, count: int) -> list[str | None]:
    if text is None:
        return [None] * count
    entries = text.split(":")
    if len(entries) != count:
        raise InheritanceError(
            f"invalid LISTEN_FDNAMES={text!r}: {len(entries)} names for LISTEN_FDS={count}; "
            "pass one name per socket, separated by ':'"
        )
    return [None if entry in ("", "unknown") else entry for entry in entries]


def _fits_by_name(bind: Bind, name: str | None, actual: Address) -> bool:
    named = bind.name is not None and bind.name == name
    return named and _fits(bind.address, actual, any_port=True, any_host=True)


def _fits_exactly(bind: Bind, name: str | None, actual: Address) -> bool:
    return _fits(bind.address, actual, any_port=False, any_host=False)


def _fits_host_name(bind: Bind, name: str | None, actual: Address) -> bool:
    return _fits(bind.address, actual, any_port=False, any_host=True)


def _fits(requested: Address, actual: Address, *, any_port: bool, any_host: bool) -> bool:
    """Whether ``actual`` serves ``requested``; ``any_*`` let port 0 and host names fit."""
    if isinstance(requested, UnixAddress):
        return requested == actual
    if not isinstance(requested, TcpAddress) or not isinstance(actual, TcpAddress):
        return False
    if requested.family not in (socket.AF_UNSPEC, actual.family):
        return False
    same_port = requested.port == actual.port != 0
    if not (same_port or (any_port and requested.port == 0)):
        return False
    wanted = _ip(requested.host)
    return any_host if wanted is None else wanted == _ip(actual.host)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
