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
children never see them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

__all__ = ["STDERR_VAR", "UPSTREAM_VAR", "Handshake", "successor_environ"]

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
        stderr_fd = int(fd_text) if fd_text and fd_text.isascii() and fd_text.isdigit() else None
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


def successor_environ(environ: Mapping[str, str], notify_address: str) -> dict[str, str]:
    """The environment for a successor whose READY=1 goes to ``notify_address``.

    ``GAPLESS_STDERR_FD`` is set by the spawner, which knows where fd 2 lands.
    """
    env = dict(environ)
    env[UPSTREAM_VAR] = environ.get("NOTIFY_SOCKET", "")
    env["NOTIFY_SOCKET"] = notify_address
    return env
