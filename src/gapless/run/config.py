"""The settings of ``gapless run`` and the listeners it opens from them.

Example::

    >>> from gapless.sockets.addresses import parse_bind
    >>> config = ManagerConfig(command=["gunicorn", "app:app"], binds=[parse_bind(":8000")])
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..sockets.addresses import Bind
from ..systemd.binds import Listener, take_or_open
from ..systemd.listen_fds import consume_listen_fds
from .readiness import ReadyMode

__all__ = ["Listener", "ManagerConfig", "ReadyMode", "open_listeners"]


@dataclass(frozen=True)
class ManagerConfig:
    """What ``gapless run`` was asked for; see ``gapless run --help``."""

    command: Sequence[str]
    binds: Sequence[Bind] = ()
    control_path: str | None = None  # None: default_control_path()
    pid_file: str | None = None
    ready: ReadyMode = field(default_factory=lambda: ReadyMode.parse("auto"))
    ready_timeout: float = 60.0
    drain_timeout: float = 30.0
    stop_signal: signal.Signals = signal.SIGTERM
    log_format: str = "text"
    handoff_path: str | None = None  # --handoff: None off; see gapless.run.extras.handoff
    handoff_timeout: float = 10.0
    shutdown_delay: float = 0.0
    health_bind: Bind | None = None
    # Fork generations from a fork server (gapless.run.warm) when the command is
    # ``PYTHON -m MODULE ...``: gapless serve sets it.
    warm: bool = False
    # Shell commands run around reloads (gapless.run.hooks); None: no hook.
    before_reload: str | None = None
    on_ready: str | None = None
    on_reload_failed: str | None = None
    hook_timeout: float = 30.0


def open_listeners(
    binds: Sequence[Bind],
    environ: dict[str, str],
    taken: Sequence[tuple[str | None, socket.socket]] = (),
) -> list[Listener]:
    """Open the binds, taking the sockets the manager itself inherited first.

    Sockets systemd passed to the manager (socket activation, ``LISTEN_FDS``, or
    its fd store) and those ``taken`` from a previous instance (``--handoff``)
    serve the binds they match; with no bind at all, every one is used.

    Raises:
        ListenError: a bind could not be opened.
        InheritanceError, AdoptError: the manager's own ``LISTEN_*`` are broken.
    """
    inherited = consume_listen_fds(environ) + list(taken)
    if not binds:
        return [Listener(name, sock, None, inherited=True) for name, sock in inherited]
    return take_or_open(binds, inherited, own_inherited=False, close_unmatched=True)
