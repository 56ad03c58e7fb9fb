"""The watchdog: a manager killed outright leaves nothing serving behind it.

The problem. When ``gapless run`` dies without running its own code (SIGKILL,
the OOM killer, a supervisor's hammer), its generations and their workers go on
serving on the listening sockets. A manager restarted by its supervisor then
cannot bind the address, and the orphans serve old code until someone finds
them.

Why not PR_SET_PDEATHSIG alone. Each generation's leader already asks for its
stop signal when the manager dies (gapless.proc.forkexec), and that stays: it
costs nothing and covers the moment between a fork and this watchdog hearing
of it. But the setting is per process and reaches only the manager's direct
child: a prefork server's workers are the leader's children, so a leader that
exits on the signal without stopping them (or that is itself SIGKILLed)
orphans them, still accepting. And it brings no deadline: a leader that ignores
the signal, or hangs in its drain, serves for ever.

Why not a cgroup. ``cgroup.kill`` ends a whole tree atomically, but it needs a
writable, delegated cgroup v2 subtree, which a container, a non-root user or a
plain supervisor rarely gives. Process groups are there everywhere: each
generation runs in one of its own already (its pgid is its leader's pid).

The mechanism. Before generation 1 the manager forks this small process. It
holds the read end of a pipe whose write end only the manager holds (close-on-
exec in every other process it starts), and reads from it the process groups to
guard (``watch PGID``) and to forget once empty (``forget PGID``). End of file
means the manager is gone, since the kernel closes its fds however it dies.
The watchdog then sends the stop signal (and SIGCONT, for a stopped process) to
every group it still guards, waits on pidfds until the groups are empty or the
drain timeout passed, then SIGKILLs what is left, and exits. Invariant 5
holds even without the manager: the whole group is killed after its deadline.
A manager that stops cleanly has forgotten every group first, so EOF then ends
the watchdog quietly.

What it survives. ``gapless upgrade`` re-execs the manager in place: the write
end is one of the fds kept across the exec (gapless.run.reexec), so no EOF is
seen, and the new process adopts the watchdog. Under ``--handoff`` a taking-over
instance adopts no generation (it gets sockets and starts its own), so each
instance's watchdog guards only its own generations. The watchdog ignores the
signals a terminal or a careless ``kill -- -PGID`` sends and runs in a process
group of its own; if it dies anyway, the manager reaps it and starts another.

Limits. A process that leaves its generation's group (``setsid``, a daemon)
escapes it, as it escapes the manager's own kill. A group that empties just as
the manager dies may be signalled after its number was reused: pids are not
reused that fast in practice (pid_max is 4 million on 64-bit Linux).

Example::

    watchdog = Watchdog.start(signal.SIGTERM, grace=30.0)
    watchdog.watch(child.pid)     # after spawning a generation in its own group
    watchdog.forget(child.pid)    # once the group is empty
    watchdog.close()              # at a clean exit
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import select

from . import guard
from .forkexec import fork_signals_blocked

__all__ = ["Watchdog"]

_PENDING_LIMIT = 1 << 16  # bytes of messages for a watchdog that does not read


class Watchdog:
    """The manager's end of the watchdog: its pid and the pipe to it.

    Args:
        pid: the watchdog process, a child of this one.
        fd: the pipe's write end.
        stop_signal: sent to each guarded group when the manager dies.
        grace: seconds after which what remains of a group is SIGKILLed.
        log_format: ``"text"`` or ``"json"``, for the lines it writes on stderr.
    """

    def __init__(
        self, pid: int, fd: int, stop_signal: int, grace: float, log_format: str = "text"
    ) -> None:
        self.pid = pid
        self._fd = fd
        self._stop_signal = stop_signal
        self._grace = grace
        self._log_format = log_format
        self.groups: set[int] = set()
        self._pending = b""
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)

    @classmethod
    def start(cls, stop_signal: int, grace: float, log_format: str = "text") -> Watchdog:
        """Fork the watchdog.

        Raises:
            OSError: no pipe or no process could be had (EMFILE, EAGAIN).
        """
        read_fd, write_fd = os.pipe()
        try:
            pid = _fork(read_fd, stop_signal, grace, log_format)
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        return cls(pid, write_fd, stop_signal, grace, log_format)

    def fileno(self) -> int:
        """The write end: kept across an exec in place, it keeps the watchdog idle."""
        return self._fd

    def watch(self, pgid: int) -> None:
        """Guard process group ``pgid``."""
        self.groups.add(pgid)
        self._send(b"watch %d\n" % pgid)

    def forget(self, pgid: int) -> None:
        """Stop guarding ``pgid`` (it is empty: its number may be reused)."""
        if pgid in self.groups:
            self.groups.discard(pgid)
            self._send(b"forget %d\n" % pgid)

    def restart(self) -> None:
        """After the watchdog died (and was reaped): start another, guarding the same.

        Raises:
            OSError: as :meth:`start`; the groups are then unguarded.
        """
        os.close(self._fd)
        self._fd = -1
        replacement = Watchdog.start(self._stop_signal, self._grace, self._log_format)
        self.pid, self._fd, self._pending = replacement.pid, replacement._fd, b""
        for pgid in sorted(self.groups):
            self._send(b"watch %d\n" % pgid)

    def _send(self, message: bytes) -> None:
        """Write without blocking; what a stopped watchdog does not read waits."""
        data = self._pending + message
        if len(data) > _PENDING_LIMIT or self._fd < 0:
            data = message  # a watchdog that long stopped: old news is dropped
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:  # EPIPE: it died; the manager restarts it when reaped
            if exc.errno not in (errno.EPIPE, errno.EBADF):
                raise
            written = len(data)
        self._pending = data[written:]

    def close(self, timeout: float = 5.0) -> None:
        """Close the pipe (a clean exit: forget the groups first) and reap the watchdog."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(self.pid)
            try:
                select.select([pidfd], [], [], timeout)
            finally:
                os.close(pidfd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)


def _fork(read_fd: int, stop_signal: int, grace: float, log_format: str) -> int:
    """Fork the watchdog with every signal blocked until it has reset our handlers."""
    manager = os.getpid()
    name = guard.resolve_prctl()  # looked up before fork: dlopen in the child may hang
    run = functools.partial(guard.run, read_fd, manager, stop_signal, grace, log_format, name)
    return fork_signals_blocked(run)
