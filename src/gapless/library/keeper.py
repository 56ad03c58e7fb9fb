"""Library mode keeping its PID: ``Upgrader(keep_pid=True)``.

A self-upgrading process changes its PID at every upgrade, which loses init
systems and tools that follow one PID (systemd with ``NotifyAccess=main``,
daemontools, a PID file read by monit). With ``keep_pid`` the process that was
started stays: it forks once, the child runs the server as its first version,
and the original becomes a thin *keeper* that:

* is a child subreaper, so each successor, orphaned when its predecessor exits,
  becomes the keeper's own child and is reaped by it;
* gives the versions its own ``NOTIFY_SOCKET`` and relays what they send to
  systemd (``READY=1``, ``RELOADING=1``, ``STOPPING=1``, ``STATUS=``) under its
  own PID, dropping ``MAINPID=``: the main PID stays the keeper. The ``MAINPID=``
  a version sends when its successor is ready tells the keeper who is current;
* forwards the upgrade and stop signals to the current version only (a draining
  one would take a second TERM as "exit at once");
* writes the PID file, naming itself, once the first version is ready;
* exits with the status of the last version once no version is left.

Why a keeper rather than goagain's "Double" (the original process re-executes
itself while a temporary child serves): that needs two cold starts per upgrade
and a state transfer through the exec; the keeper costs one idle process, with
no polling, and nothing per upgrade. Create the Upgrader before starting
threads: the fork copies only the calling thread.

Example (what ``Upgrader(keep_pid=True)`` does first)::

    keep_pid(os.environ, signals=[signal.SIGHUP, signal.SIGTERM], pid_file=None)
    # returns only in the child, which goes on as version 1
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import signal
import sys
from collections.abc import MutableMapping, Sequence
from typing import NoReturn

from ..errors import NotifyError, PidFileError
from ..proc.pidfile import remove_pid_file, write_pid_file
from ..proc.subreaper import set_child_subreaper
from ..proc.wakeup import SignalWakeup
from ..systemd.notify import notify
from ..systemd.notify_receiver import NotifyReceiver, in_process_tree

__all__ = ["keep_pid"]

log = logging.getLogger("gapless")

_PR_SET_PDEATHSIG = 1
_RELAYED = ("READY", "RELOADING", "MONOTONIC_USEC", "STOPPING", "STATUS", "ERRNO")


def keep_pid(
    environ: MutableMapping[str, str],
    signals: Sequence[signal.Signals],
    pid_file: str | os.PathLike[str] | None,
) -> None:
    """Fork: return in the child (the first version); run the keeper in this process,
    which never returns (it exits with the last version's status).

    Args:
        environ: the server's environment; in the child ``NOTIFY_SOCKET`` becomes the
            keeper's and ``LISTEN_PID`` follows the fds to the child.
        signals: the signals the Upgrader handles, forwarded to the current version.
        pid_file: written with the keeper's PID once the first version is ready.
    """
    receiver = NotifyReceiver()
    upstream = environ.get("NOTIFY_SOCKET", "")
    keeper = os.getpid()
    blocked = {*signals, signal.SIGCHLD}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork
    child = os.fork()
    if child == 0:
        receiver.close()  # the keeper's; an abstract name, so nothing is unlinked
        # A keeper killed outright must not leave its version serving for ever.
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != keeper:
            os.kill(os.getpid(), signal.SIGTERM)
        environ["NOTIFY_SOCKET"] = receiver.address
        if environ.get("LISTEN_PID") == str(keeper):
            environ["LISTEN_PID"] = str(os.getpid())
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return
    _close_listen_fds(environ, keeper)
    _Keeper(receiver, upstream, child, pid_file).run(signals, previous)


def _close_listen_fds(environ: MutableMapping[str, str], keeper: int) -> None:
    """The inherited sockets are the first version's now: the keeper holds none."""
    if environ.get("LISTEN_PID") != str(keeper):
        return
    count = environ.get("LISTEN_FDS", "")
    if count.isascii() and count.isdigit():
        os.closerange(3, 3 + int(count))


class _Keeper:
    def __init__(
        self,
        receiver: NotifyReceiver,
        upstream: str,
        first: int,
        pid_file: str | os.PathLike[str] | None,
    ) -> None:
        self._receiver = receiver
        self._upstream = upstream
        self._current = first
        self._pid_file = pid_file
        self._wrote_pid_file = False
        self._status = 0

    def run(self, signals: Sequence[signal.Signals], mask: set[int | signal.Signals]) -> NoReturn:
        set_child_subreaper()
        log.info("pid %d keeps its pid; version 1 runs as pid %d", os.getpid(), self._current)
        caught = SignalWakeup((*signals, signal.SIGCHLD))
        with caught, selectors.DefaultSelector() as selector:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            selector.register(caught, selectors.EVENT_READ, "signal")
            selector.register(self._receiver, selectors.EVENT_READ, "notify")
            while self._reap():
                for key, _ in selector.select():
                    if key.data == "signal":
                        self._forward(caught.take())
                    else:
                        self._relay()
            self._finish()  # in the block: a late TERM is caught, not fatal

    def _forward(self, received_signals: list[signal.Signals]) -> None:
        for received in received_signals:
            if received != signal.SIGCHLD:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._current, received)

    def _reap(self) -> bool:
        """Reap what exited; False once no child is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            code = os.waitstatus_to_exitcode(status)
            if pid == self._current:
                self._status = code if code >= 0 else 128 - code  # -N: killed by signal N

    def _relay(self) -> None:
        while True:
            try:
                note = self._receiver.receive()
            except NotifyError as exc:
                log.warning("ignored a notify datagram: %s", exc)
                continue
            if note is None:
                return
            if not in_process_tree(note.pid, os.getpid()):
                continue
            if note.mainpid is not None and in_process_tree(note.mainpid, os.getpid()):
                self._current = note.mainpid
            if note.ready and not self._wrote_pid_file and self._pid_file is not None:
                self._wrote_pid_file = True
                try:
                    write_pid_file(self._pid_file)
                except PidFileError as exc:
                    log.error("%s", exc)
            fields = {key: value for key, value in note.fields.items() if key in _RELAYED}
            if fields and self._upstream:
                with contextlib.suppress(NotifyError):
                    notify(fields=fields, environ={"NOTIFY_SOCKET": self._upstream})

    def _finish(self) -> NoReturn:
        self._receiver.close()
        if self._pid_file is not None:
            with contextlib.suppress(OSError):
                remove_pid_file(self._pid_file)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(self._status)
