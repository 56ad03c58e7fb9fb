"""The two private variables between a gapless process and its successor.

systemd's ``NOTIFY_SOCKET`` carries a successor's ``READY=1`` to its
predecessor; two more things must pass for the successor to stand alone once
the predecessor is gone:

* ``GAPLESS_UPSTREAM_NOTIFY_SOCKET``: systemd's own ``NOTIFY_SOCKET`` (empty when
  there is none). Once ready, the successor speaks to systemd with it.
* ``GAPLESS_STDERR_FD``: the predecessor's original stderr. Until it is ready the
  successor writes its stderr to a pipe the predecessor reads (to quote its last
  lines if it fails); once ready it takes this fd as its stderr, so nothing it
  writes depends on the predecessor staying alive.

Both are removed from the environment when read, so the successor's own
children never see them. The stderr fd is taken only if it can be a stderr
(checked by :func:`stderr_fd_problem`) and is made close-on-exec at once;
anything else is ignored with one warning: a wrong number would otherwise have
this process write its log over, and then close, a socket or file of its own.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import stat
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

__all__ = ["STDERR_VAR", "UPSTREAM_VAR", "Handshake", "stderr_fd_problem", "successor_environ"]

log = logging.getLogger("gapless")

UPSTREAM_VAR = "GAPLESS_UPSTREAM_NOTIFY_SOCKET"
STDERR_VAR = "GAPLESS_STDERR_FD"


@dataclass
class Handshake:
    """What this process took from a gapless predecessor (nothing if none)."""

    upstream: str | None
    stderr_fd: int | None

    @classmethod
    def take(cls, environ: MutableMapping[str, str]) -> Handshake:
        upstream = environ.pop(UPSTREAM_VAR, None)
        fd_text = environ.pop(STDERR_VAR, None)
        if fd_text is None:
            return cls(upstream, None)
        problem = stderr_fd_problem(fd_text, from_gapless=upstream is not None)
        if problem:
            log.warning("ignored %s=%r: %s; keeping this stderr", STDERR_VAR, fd_text, problem)
            return cls(upstream, None)
        stderr_fd = int(fd_text)
        os.set_inheritable(stderr_fd, False)  # this server's own children must not get it
        return cls(upstream, stderr_fd)

    @property
    def from_gapless(self) -> bool:
        return self.upstream is not None

    def complete(self, environ: MutableMapping[str, str]) -> None:
        """After READY=1 reached the predecessor: speak to systemd, own stderr."""
        if self.upstream is not None:
            environ.pop("NOTIFY_SOCKET", None)
            if self.upstream:
                environ["NOTIFY_SOCKET"] = self.upstream
            self.upstream = None
        if self.stderr_fd is not None:
            try:
                os.dup2(self.stderr_fd, 2)
                os.close(self.stderr_fd)
            except OSError:
                pass  # not an fd we were given: keep the stderr we have
            self.stderr_fd = None


def stderr_fd_problem(text: str, *, from_gapless: bool) -> str | None:
    """Why ``text`` is no stderr a predecessor passed, or None if it is one: a
    number above 2 naming an fd open for writing on a pipe, a terminal or other
    character device, a file (``2>log``) or a socket that is not listening
    (journald's stream)."""
    if not from_gapless:
        return f"{UPSTREAM_VAR} is not set, so no gapless predecessor passed it"
    if not (text.isascii() and text.isdigit() and len(text) < 10 and int(text) > 2):
        return "not a file descriptor above 2"
    fd = int(text)
    try:
        mode = os.fstat(fd).st_mode
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return "not an open file descriptor"
    if flags & os.O_ACCMODE == os.O_RDONLY:
        return "not open for writing"
    if stat.S_ISSOCK(mode):
        return "a listening socket" if _listening(fd) else None
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISREG(mode):
        return None
    return "not a pipe, terminal, file or socket"


def _listening(fd: int) -> bool:
    sock = socket.socket(fileno=fd)
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False
    finally:
        sock.detach()  # the fd is not ours to close


def successor_environ(environ: Mapping[str, str], notify_address: str) -> dict[str, str]:
    """The environment for a successor whose READY=1 goes to ``notify_address``.

    ``GAPLESS_STDERR_FD`` is set by the spawner, which knows where fd 2 lands.
    """
    env = dict(environ)
    env[UPSTREAM_VAR] = environ.get("NOTIFY_SOCKET", "")
    env["NOTIFY_SOCKET"] = notify_address
    return env
