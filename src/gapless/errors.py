"""Exceptions raised by gapless.

Every error a user can cause has its own type, and its message is one line that
names the bad input and says what to do. All of them derive from
:class:`GaplessError`, so ``except gapless.GaplessError`` catches exactly the
errors this package raises on purpose; anything else escaping is a bug.
"""

from __future__ import annotations

import enum


class GaplessError(Exception):
    """Base class of every error gapless raises on purpose."""


class BindError(GaplessError, ValueError):
    """A bind string could not be parsed, e.g. ``invalid bind 'x:99999': ...``."""


class ListenError(GaplessError, OSError):
    """A listening socket could not be opened for a valid bind."""


class AddressInUseError(ListenError):
    """The address is already taken by another process."""


class ListenPermissionError(ListenError):
    """The process may not bind the address (a privileged port, a read-only dir)."""


class UnixPathTooLongError(ListenError):
    """A unix socket path does not fit in ``sockaddr_un`` (107 bytes)."""


class AdoptError(GaplessError):
    """An inherited or given fd is not a usable listening stream socket."""


class InheritanceError(GaplessError, ValueError):
    """The ``LISTEN_*`` environment variables are malformed."""


class NotifyError(GaplessError):
    """A readiness (``NOTIFY_SOCKET``) message was malformed or could not be sent."""


class PidFileError(GaplessError, OSError):
    """The PID file could not be written (missing directory, read-only, disk full)."""


class SignalsError(GaplessError):
    """Signal handlers could not be installed (not in the main thread, bad name)."""


class UpgradeError(GaplessError):
    """An upgrade failed; the running process keeps serving."""


class SuccessorSpawnError(UpgradeError):
    """The successor's command could not be started (not found, not executable)."""


class SuccessorExitedError(UpgradeError):
    """The successor exited or was killed by a signal before it was ready."""

    def __init__(self, message: str, *, pid: int, returncode: int, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.pid = pid
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class SuccessorTimeoutError(UpgradeError):
    """The successor did not report readiness in time and was killed."""

    def __init__(self, message: str, *, pid: int, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.pid = pid
        self.stderr_tail = stderr_tail


class HookError(UpgradeError):
    """A ``before_upgrade`` hook raised, which vetoes the upgrade."""


class UpgradeRefusedError(UpgradeError):
    """An upgrade was requested in a state that does not allow one (stopping)."""


class IllegalTransition(GaplessError, RuntimeError):
    """An event arrived in a state that cannot take it: a bug in a driver, never
    the user's doing. Both state machines (``library.lifecycle`` and
    ``run.generations``) raise it.

    Args:
        where: the state (an enum member, shown as ``in state <value>``) or a
            phrase completing ``when ...``, e.g. ``"generation 3 is draining"``.
        event: the event that was refused.
    """

    def __init__(self, where: str | enum.Enum, event: object) -> None:
        place = f"in state {where.value}" if isinstance(where, enum.Enum) else f"when {where}"
        super().__init__(f"event {event!r} is not allowed {place}")
        self.where = where
        self.event = event


class ConfigError(GaplessError, ValueError):
    """A ``gapless run`` setting is invalid, e.g. ``--ready delay:x``."""


class SettingsError(ConfigError):
    """A setting from the environment or a config file is bad: a value its option
    refuses (``GAPLESS_DRAIN_TIMEOUT=abc``), an unknown key, an unreadable file.
    The CLI exits 2 on it, as on a bad command line."""


class ControlError(GaplessError):
    """The control socket could not be opened, reached or understood."""


class NoManagerError(ControlError):
    """No manager listens on the control socket (missing file, nobody accepting)."""


class HandoffError(GaplessError):
    """Sockets could not be passed between two instances over a handoff socket
    (``gapless run --handoff``): a peer of another user, a broken message, a timeout."""


class OwnPortError(GaplessError):
    """A starting generation of ``gapless run`` serves on a TCP port it bound itself,
    not on the sockets it was handed (LISTEN_FDS)."""


class ServeError(GaplessError):
    """``gapless serve`` cannot load or run the application, e.g. a bad ``MODULE:APP``."""


class BenchError(GaplessError):
    """``gapless bench`` could not run: a bad option, a server that never served."""


class ReloadCheckError(GaplessError):
    """``gapless.testing.check_reloads`` could not run its check: a bad argument, an
    app that exited or was not ready in time, a reload that failed or timed out."""


class OptionIgnoredError(ServeError):
    """A ``gapless serve`` option was given that the chosen server would ignore,
    e.g. ``--http h11`` with hypercorn."""
