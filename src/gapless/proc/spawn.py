"""Starting a generation with its listening sockets, then watching it through a pidfd.

Over 300 lines on purpose: ``Child`` (spawn, signal, kill the group, wait) and
``ExitStatus`` (how each end is described to the user) are read together
whenever a generation ends.

The child gets the sockets as systemd hands them over (sd_listen_fds(3)): fds 3, 4, ...
in order, ``LISTEN_FDS``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` set to the exec'd
process's own PID. :class:`subprocess.Popen` cannot do that: it builds the environment
before fork, so the child's PID is unknown, and ``pass_fds`` keeps fd numbers. So this
module forks and execs itself, in the manner of ``_posixsubprocess``: the parent
computes everything first (argv, env, the fd plan, the PATH candidates), the child only
makes system calls and reports an exec failure over a close-on-exec pipe.

Example::

    child = spawn(["gunicorn", "app:app"], listeners=[sock], names=["web"])
    status = child.wait(timeout=5.0)  # None while it runs
    child.kill_group(signal.SIGKILL)
    child.close()
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import select
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import InheritanceError, SuccessorSpawnError
from .forkexec import FIRST_FD, NOT_FOUND, Plan, fork_exec
from .stderr_tail import StderrTail

__all__ = ["Child", "ExitStatus", "StderrTail", "spawn"]

_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


@dataclass(frozen=True)
class ExitStatus:
    """How a child ended; a negative ``returncode`` is the signal that killed it."""

    returncode: int

    def describe(self) -> str:
        """Return e.g. ``"exited with code 3"`` or ``"killed by signal 9 (SIGKILL)"``."""
        if self.returncode >= 0:
            return f"exited with code {self.returncode}"
        number = -self.returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            return f"killed by signal {number}"
        return f"killed by signal {number} ({name})"


class Child:
    """A spawned generation: its pid, a pidfd to wait on, and its stderr and stdout
    pipes if captured."""

    def __init__(
        self,
        pid: int,
        stderr_fd: int | None,
        process_group: bool,
        stdout_fd: int | None = None,
    ) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)  # close-on-exec by the kernel's rule
        self.stderr_fd = stderr_fd
        self.stdout_fd = stdout_fd
        self.process_group = process_group
        self.started = time.monotonic()
        self._status: ExitStatus | None = None

    def __repr__(self) -> str:
        return f"<Child pid={self.pid} status={self._status}>"

    def fileno(self) -> int:
        """Return the pidfd: it becomes readable when the child exits (selectors, asyncio)."""
        return self.pidfd

    def poll(self) -> ExitStatus | None:
        """Reap the child if it has exited, without blocking.

        Returns:
            The exit status (cached, so repeated calls are safe), or None while it runs.
        """
        if self._status is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                # Someone else reaped it (SIGCHLD ignored): the status is lost. Popen
                # reports 0 in this case too.
                self._status = ExitStatus(0)
            else:
                if pid:
                    self._status = ExitStatus(os.waitstatus_to_exitcode(status))
        return self._status

    def wait(self, timeout: float | None = None) -> ExitStatus | None:
        """Wait on the pidfd for the child to exit, then reap it.

        Args:
            timeout: seconds to wait at most; None waits for ever.

        Returns:
            The exit status, or None if the child still runs after ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        while (status := self.poll()) is None:
            if deadline is None:
                poller.poll()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            poller.poll(remaining * 1000)
        return status

    def send_signal(self, sig: int) -> None:
        """Signal the child; a no-op once it has exited.

        The pidfd names this very process, so the signal cannot reach a later process
        that reuses the pid; after reaping, the pid is never signalled at all.
        """
        if self._status is not None:
            return
        try:
            if hasattr(signal, "pidfd_send_signal"):
                signal.pidfd_send_signal(self.pidfd, sig)
            else:  # pragma: no cover - Python without pidfd_send_signal
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass  # exited, not yet reaped

    def kill_group(self, sig: int) -> None:
        """Signal the child's whole process group, or only the child without one.

        The group is signalled even after the leader was reaped, since its workers may
        outlive it; the kernel keeps a pid number reserved while it names a live group.
        """
        if not self.process_group:
            self.send_signal(sig)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def close(self) -> None:
        """Close the pidfd and the output pipes. It does not reap or signal the child."""
        _close(self.pidfd if self.pidfd >= 0 else None, self.stderr_fd, self.stdout_fd)
        self.pidfd = -1
        self.stderr_fd = None
        self.stdout_fd = None


def spawn(
    argv: Sequence[str],
    *,
    listeners: Sequence[socket.socket] = (),
    names: Sequence[str | None] = (),
    env: Mapping[str, str] | None = None,
    extra_fds: Mapping[str, int] | None = None,
    new_process_group: bool = False,
    capture_stderr: bool = False,
    capture_stdout: bool = False,
    cwd: str | None = None,
    death_signal: int | None = None,
) -> Child:
    """Start ``argv`` with ``listeners`` on fds 3, 4, ... as systemd passes them.

    Args:
        argv: the command; ``argv[0]`` is looked up in the child's PATH if it has no '/'.
        listeners: sockets for the child, in order, at fds 3, 4, ...
        names: one ``LISTEN_FDNAMES`` entry per listener (None is "unknown"), or empty.
        env: the child's environment (default ``os.environ``); ``LISTEN_*`` is replaced.
        extra_fds: env var name -> our fd; each fd follows the listeners and the variable
            holds its number in the child.
        new_process_group: put the child in a process group of its own.
        capture_stderr: give the child a pipe as stderr; its read end is ``stderr_fd``.
        capture_stdout: give the child a pipe as stdout; its read end is ``stdout_fd``.
        cwd: the directory to run the child in.
        death_signal: a signal the child gets when this thread exits or is killed
            (``PR_SET_PDEATHSIG``), so it does not outlive a manager; not for a
            successor, which must outlive its parent.

    Returns:
        The running child.

    Raises:
        SuccessorSpawnError: empty argv, command not found or not executable, a bad fd,
            or no process or fd left to start it (RLIMIT_NPROC, RLIMIT_NOFILE).
        InheritanceError: ``names`` does not match ``listeners`` or a name holds ':'.
    """
    plan = _make_plan(argv, listeners, names, env, extra_fds or {}, new_process_group, cwd)
    if death_signal:
        plan = dataclasses.replace(plan, death_signal=death_signal, parent_pid=os.getpid())
    err_r, err_w = _pipe(argv[0])
    out_r, out_w = _pipe(argv[0], err_r, err_w) if capture_stderr else (None, None)
    std_r, std_w = _pipe(argv[0], err_r, err_w, out_r, out_w) if capture_stdout else (None, None)
    try:
        pid = fork_exec(plan, err_w, out_w, std_w)
    except BaseException as exc:
        _close(err_r, out_r, std_r)
        if isinstance(exc, OSError):  # EAGAIN under RLIMIT_NPROC, ENOMEM
            raise SuccessorSpawnError(_resource_message(argv[0], "fork failed", exc)) from None
        raise
    finally:
        _close(err_w, out_w, std_w)
    if new_process_group:
        # The child does it too, so that neither a killpg from us nor the child's exec
        # races it; EACCES here only means the child already exec'd, after its own.
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
    report = _read_to_eof(err_r)
    if report:
        os.waitpid(pid, 0)
        _close(out_r, std_r)
        raise SuccessorSpawnError(_failure_message(argv[0], cwd, report))
    for fd in (out_r, std_r):
        if fd is not None:
            os.set_blocking(fd, False)
    try:
        return Child(pid, out_r, new_process_group, std_r)
    except OSError as exc:  # no fd for its pidfd: a child we cannot watch must not run
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        _close(out_r, std_r)
        raise SuccessorSpawnError(_resource_message(argv[0], "cannot open a pidfd", exc)) from None


def _pipe(command: str, *opened: int | None) -> tuple[int, int]:
    """A pipe; fd exhaustion is an error, which closes the fds ``opened`` before it."""
    try:
        return os.pipe()
    except OSError as exc:
        _close(*opened)
        raise SuccessorSpawnError(_resource_message(command, "cannot open a pipe", exc)) from None


def _make_plan(
    argv: Sequence[str],
    listeners: Sequence[socket.socket],
    names: Sequence[str | None],
    env: Mapping[str, str] | None,
    extra_fds: Mapping[str, int],
    new_process_group: bool,
    cwd: str | None,
) -> Plan:
    if not argv or not argv[0]:
        raise SuccessorSpawnError("cannot start an empty command; give the program to run")
    if names and len(names) != len(listeners):
        raise InheritanceError(f"{len(names)} names for {len(listeners)} listeners; give one each")
    if any(name and ":" in name for name in names):
        raise InheritanceError(f"a LISTEN_FDNAMES entry may not contain ':', got {list(names)}")
    child_env = {k: v for k, v in (os.environ if env is None else env).items()}
    for var in _LISTEN_VARS:
        child_env.pop(var, None)
    sources = [_checked_fd(argv[0], f"listener #{i}", s.fileno()) for i, s in enumerate(listeners)]
    if listeners:
        child_env["LISTEN_FDS"] = str(len(listeners))
        child_env["LISTEN_FDNAMES"] = ":".join(
            n or "unknown" for n in names or [None] * len(sources)
        )
        child_env["LISTEN_PID"] = "0"  # placeholder; the child writes its own pid
    for var, fd in extra_fds.items():
        child_env[var] = str(FIRST_FD + len(sources))
        sources.append(_checked_fd(argv[0], var, fd))
    _check_strings(argv, child_env)
    return Plan(
        executables=[os.fsencode(p) for p in _candidates(argv[0], child_env)],
        argv=[os.fsencode(a) for a in argv],
        env={os.fsencode(k): os.fsencode(v) for k, v in child_env.items()},
        set_listen_pid=bool(listeners),
        sources=sources,
        handled_signals=[s for s in signal.valid_signals() if callable(signal.getsignal(s))],
        cwd=None if cwd is None else os.fsencode(cwd),
        new_process_group=new_process_group,
        max_fd=max([os.sysconf("SC_OPEN_MAX"), *sources]) + 1,
    )


def _checked_fd(command: str, what: str, fd: int) -> int:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except (OSError, ValueError, OverflowError):
        raise SuccessorSpawnError(
            f"cannot start {command!r}: {what} is not an open fd ({fd}); pass an open one"
        ) from None
    return fd


def _check_strings(argv: Sequence[str], env: Mapping[str, str]) -> None:
    bad = [a for a in argv if "\0" in a] + [k for k in env if not k or "=" in k or "\0" in k]
    bad += [k for k, v in env.items() if "\0" in v]
    if bad:
        raise SuccessorSpawnError(
            f"cannot start {argv[0]!r}: invalid argument or variable {bad[0]!r}; "
            "remove NUL bytes and '=' from names"
        )


def _candidates(command: str, env: Mapping[str, str]) -> list[str]:
    """The paths ``os.execvpe`` would try, in order."""
    if os.path.dirname(command):
        return [command]
    return [os.path.join(d, command) for d in os.get_exec_path(dict(env))]


def _read_to_eof(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 256):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _failure_message(command: str, cwd: str | None, report: bytes) -> str:
    stage, _, number = report.decode(errors="replace").partition(":")
    code = int(number) if number.isdigit() else 0
    name = errno.errorcode.get(code, str(code))
    why = f"{os.strerror(code)} ({name})"
    if stage == "chdir":
        why = f"cannot enter directory {cwd!r}: {why}; check cwd"
    elif stage != "exec":
        why = f"failed before exec: {why if code else 'unexpected error'}"
    elif code in NOT_FOUND:
        why = f"command not found ({name}); check the path or PATH"
    elif code in (errno.EACCES, errno.EPERM):
        why = f"not executable ({name}); check it is a file with execute permission"
    elif code == errno.ENOEXEC:
        why = f"not an executable format ({name}); add a '#!' line to the script"
    return f"cannot start {command!r}: {why}"


def _resource_message(command: str, what: str, exc: OSError) -> str:
    """Why ``command`` could not start (``what`` failed), naming the limit hit."""
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        hint = "out of file descriptors: raise RLIMIT_NOFILE (ulimit -n, LimitNOFILE=)"
    elif exc.errno == errno.EAGAIN:
        hint = "process limit reached: raise RLIMIT_NPROC (ulimit -u, TasksMax=)"
    elif exc.errno == errno.ENOMEM:
        hint = "out of memory"
    else:
        hint = "check the system's limits"
    return f"cannot start {command!r}: {what} ({name}: {exc.strerror}); {hint}"


def _close(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)
