"""Fork and exec a child that gets fds at fixed numbers and its own PID in LISTEN_PID.

The parent computes a :class:`Plan` first (argv, env, the fd plan, the PATH
candidates); the forked child only makes system calls, then execs, and reports
a failure as ``stage:errno`` on a close-on-exec pipe, in the manner of
``_posixsubprocess``. Used by :func:`gapless.proc.spawn.spawn`.

With ``Plan.death_signal`` the child asks the kernel for that signal when its
parent dies (``PR_SET_PDEATHSIG``), so that a generation's leader learns at once
that its manager was killed. The setting survives exec, except of a setuid or
setgid program, and reaches only the child itself, not its own children: the
watchdog (gapless.proc.watchdog) ends the rest of the group.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import signal
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

__all__ = ["FIRST_FD", "NOT_FOUND", "Plan", "fork_exec", "fork_signals_blocked"]

FIRST_FD = 3  # SD_LISTEN_FDS_START
NOT_FOUND = (errno.ENOENT, errno.ENOTDIR)
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Plan:
    """Everything the child needs, computed before fork so the child only makes syscalls."""

    executables: list[bytes]
    argv: list[bytes]
    # os.execve wants a mapping, so the environment is a dict; the child sets only the
    # LISTEN_PID entry, the one value it alone can know.
    env: dict[bytes, bytes]
    set_listen_pid: bool
    sources: list[int]  # the parent's fd for child fd FIRST_FD + i
    handled_signals: list[int]
    cwd: bytes | None
    new_process_group: bool
    max_fd: int
    death_signal: int = 0  # sent to the child when its parent dies; 0: none
    parent_pid: int = 0  # the forking process, to see whether it died before prctl


@functools.cache
def _prctl() -> Callable[..., int]:
    # Looked up in the parent: dlopen in a forked child may wait on a lock for ever.
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


def fork_exec(plan: Plan, err_w: int, out_w: int | None, stdout_w: int | None = None) -> int:
    """Fork and exec ``plan``; ``out_w`` becomes the child's stderr, ``stdout_w`` its stdout."""
    prctl = _prctl() if plan.death_signal else None
    return fork_signals_blocked(functools.partial(_child, plan, err_w, (out_w, stdout_w), prctl))


def fork_signals_blocked(child: Callable[[], NoReturn]) -> int:
    """Fork and run ``child`` (which never returns) in the new process; return its pid.

    All signals stay blocked from fork until the child has reset our Python handlers:
    a signal in between would run the parent's handler in the child, and its
    set_wakeup_fd byte would land in the parent's wakeup pipe. Python 3.12+ warns
    that fork() with threads may deadlock the child on a lock another thread held;
    the children forked here take no Python lock: they make system calls, then exec
    or _exit.
    """
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r".*multi-threaded.*fork", category=DeprecationWarning
            )
            pid = os.fork()
        if pid == 0:
            child()
        return pid
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _child(
    plan: Plan,
    err_w: int,
    outputs: tuple[int | None, int | None],
    prctl: Callable[..., int] | None,
) -> NoReturn:
    """Set up the forked child and exec; on failure report ``stage:errno``, exit 127."""
    stage = b"setup"
    code = 0
    try:
        signal.set_wakeup_fd(-1)
        # Python ignores SIGPIPE and SIGXFSZ at startup and ignored dispositions survive
        # exec; caught ones are reset by exec, but not before it.
        for sig in (*plan.handled_signals, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        if plan.new_process_group:
            os.setpgid(0, 0)
        if prctl is not None:
            _die_with_parent(plan, prctl)
        if plan.cwd is not None:
            stage = b"chdir"
            os.chdir(plan.cwd)
        stage = b"setup"
        err_w = _place_fds(plan, err_w, outputs)
        if plan.set_listen_pid:
            plan.env[b"LISTEN_PID"] = b"%d" % os.getpid()
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        stage = b"exec"
        code = _exec_first(plan)
    except OSError as exc:
        code = exc.errno or 0
    except BaseException:
        pass  # never let an exception unwind into the parent's code in this child
    try:
        os.write(err_w, b"%s:%d" % (stage, code))
    finally:
        os._exit(127)


def _die_with_parent(plan: Plan, prctl: Callable[..., int]) -> None:
    """Ask for ``plan.death_signal`` when the parent dies; if it died before, act now.
    The signal stays blocked, as all are here, until just before exec."""
    asked = prctl(_PR_SET_PDEATHSIG, plan.death_signal, 0, 0, 0) == 0
    if asked and os.getppid() != plan.parent_pid:
        os.kill(os.getpid(), plan.death_signal)


def _place_fds(plan: Plan, err_w: int, outputs: tuple[int | None, int | None]) -> int:
    """Put the sources at 3, 4, ..., ``outputs`` (stderr, stdout pipes) at 2 and 1,
    and close every other fd above 2; return err_w's fd."""
    # Move everything above the target range first, so no dup2 clobbers a source that
    # happens to sit on a target number. The copies are close-on-exec.
    floor = FIRST_FD + len(plan.sources)
    err_w = fcntl.fcntl(err_w, fcntl.F_DUPFD_CLOEXEC, floor)
    # Copy the sources and pipes before fds 1 and 2 are replaced: our own may be one.
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in plan.sources]
    pipes = [
        None if fd is None else fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in outputs
    ]
    for target, fd in zip((2, 1), pipes, strict=True):
        if fd is not None:
            os.dup2(fd, target)
    for target, fd in enumerate(moved, FIRST_FD):
        os.dup2(fd, target)  # dup2 clears close-on-exec on the target
    os.closerange(floor, err_w)
    os.closerange(err_w + 1, plan.max_fd)
    return err_w


def _exec_first(plan: Plan) -> int:
    """Try each candidate as ``os.execvpe`` does; return the errno to report."""
    first_other = 0
    last = errno.ENOENT
    for path in plan.executables:
        try:
            os.execve(path, plan.argv, plan.env)
        except OSError as exc:
            last = exc.errno or 0
            if last not in NOT_FOUND and not first_other:
                first_other = last
    return first_other or last
