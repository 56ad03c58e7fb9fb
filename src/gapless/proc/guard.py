"""The watchdog process itself: forked by :mod:`gapless.proc.watchdog`, never returns.

It keeps only the pipe's read end and stderr, reads ``watch PGID`` and
``forget PGID`` until end of file, then ends the groups it still guards: the
stop signal and SIGCONT at once, SIGKILL to what remains after ``grace``
seconds. It waits on pidfds, never on a timer. It writes one line on stderr,
without blocking, and closes stderr before the wait, so that no reader of the
manager's stderr waits for it; then it exits. The module docstring of
:mod:`gapless.proc.watchdog` says why.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import select
import signal
import time
from collections.abc import Callable, Iterable
from typing import NoReturn

from .logstamp import stamp
from .outlet import Outlet
from .subreaper import group_members

__all__ = ["EXIT_FAILED", "resolve_prctl", "run"]

EXIT_FAILED = 70  # EX_SOFTWARE

_PR_SET_NAME = 15
_NAME = b"gapless-watch"
# What a terminal or a signal to the manager's group would send it: only EOF ends it.
_IGNORED = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGPIPE,
    signal.SIGTSTP,
    signal.SIGTTIN,
    signal.SIGTTOU,
)

Prctl = Callable[..., int]


def resolve_prctl() -> Prctl | None:
    """prctl(2), looked up in the parent: dlopen in a forked child may wait on a lock."""
    try:
        prctl: Prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def run(
    read_fd: int,
    manager: int,
    stop_signal: int,
    grace: float,
    log_format: str,
    prctl: Prctl | None,
) -> NoReturn:
    """The forked child's whole life: guard, act on EOF, ``_exit``: 0 after EOF,
    ``EXIT_FAILED`` after an unexpected error (the manager then does not restart it)."""
    code = EXIT_FAILED
    try:
        # The manager's objects live on in this copy of its heap: a collection could
        # run their finalizers and close fds by number. Nothing here needs the GC.
        gc.disable()
        _detach(read_fd, prctl)
        groups = _listen(read_fd)
        if groups:
            _end(groups, manager, stop_signal, grace, _Log(log_format))
        code = 0
    finally:
        os._exit(code)


def _detach(read_fd: int, prctl: Prctl | None) -> None:
    """Drop the manager's handlers and fds; keep stdin/stdout on /dev/null, stderr."""
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        if callable(signal.getsignal(sig)):
            signal.signal(sig, signal.SIG_DFL)
    for sig in _IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # niceties: a terminal's ^C, a name in top(1)
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(_PR_SET_NAME, ctypes.c_char_p(_NAME), 0, 0, 0)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
    # Every other fd goes, the manager's write end first among them (else no EOF),
    # including any above a soft RLIMIT_NOFILE lowered since they were opened.
    for fd in map(int, os.listdir("/proc/self/fd")):
        if fd > 2 and fd != read_fd:
            with contextlib.suppress(OSError):  # the listing's own fd, closed by now
                os.close(fd)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _listen(read_fd: int) -> set[int]:
    """The groups still guarded when the manager's end of the pipe closed."""
    groups: set[int] = set()
    partial = b""
    while chunk := os.read(read_fd, 4096):
        *lines, partial = (partial + chunk).split(b"\n")
        for line in lines:
            verb, _, number = line.partition(b" ")
            if not number.isdigit():
                continue
            if verb == b"watch":
                groups.add(int(number))
            elif verb == b"forget":
                groups.discard(int(number))
    return groups


def _end(groups: set[int], manager: int, stop_signal: int, grace: float, log: _Log) -> None:
    deadline = time.monotonic() + grace
    name = signal.Signals(stop_signal).name
    _signal_groups(groups, stop_signal)
    _signal_groups(groups, signal.SIGCONT)
    log.write(
        f"the manager (pid {manager}) died; sent {name} to generation groups "
        f"{_listed(groups)}; SIGKILL in {grace:g} s to what is left"
    )
    # Whoever reads the manager's stderr to its end (a pipeline, a test) is not kept
    # waiting for the drain: that one line says all that is left to happen.
    log.close()
    left = _wait_empty(groups, deadline)
    if left:
        _signal_groups(left, signal.SIGKILL)


def _wait_empty(groups: Iterable[int], deadline: float) -> set[int]:
    """Wait until every group is empty or ``deadline``; return the groups left."""
    while True:
        members = {pgid: group_members(pgid) for pgid in groups}
        left = {pgid for pgid, pids in members.items() if pids}
        remaining = deadline - time.monotonic()
        if not left or remaining <= 0:
            return left
        pidfds = []
        for pid in (pid for pids in members.values() for pid in pids):
            try:
                pidfds.append(os.pidfd_open(pid))
            except OSError:  # gone already, or no fd: the deadline still bounds us
                continue
        try:
            poller = select.poll()
            for pidfd in pidfds:
                poller.register(pidfd, select.POLLIN)
            poller.poll(remaining * 1000)  # until one exits, then look again
        finally:
            for pidfd in pidfds:
                os.close(pidfd)


def _signal_groups(groups: Iterable[int], sig: int) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            continue


def _listed(groups: Iterable[int]) -> str:
    return ", ".join(str(pgid) for pgid in sorted(groups))


class _Log:
    """Lines on stderr in the manager's format, dropped rather than waited for."""

    def __init__(self, log_format: str) -> None:
        self._format = log_format
        self._outlet = Outlet(2)

    def write(self, message: str) -> None:
        if self._format == "json":
            record = {**stamp("warning"), "event": "watchdog", "message": message}
            line = json.dumps(record)
        else:
            line = f"gapless[{os.getpid()}]: watchdog: {message}"
        with contextlib.suppress(OSError):  # no stderr left: the work is done all the same
            self._outlet.write((line + "\n").encode(errors="replace"))

    def close(self) -> None:
        self._outlet.close()
        os.close(2)
