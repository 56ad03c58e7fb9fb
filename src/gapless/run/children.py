"""The OS side of the manager's generations: their processes, output and exits.

About 330 lines: spawning, reaping and the watchdog share the one map of
processes, whose reaping order is subtle; kept whole rather than split across it.

:class:`Children` starts a generation with the listeners, registers its pidfd
and output pipes in the manager's selector, forwards its stderr and stdout line
by line (keeping the stderr tail that explains a failure), reaps it without ever stealing the
status of a known child from the pidfd path, reaps orphans the manager adopted
as a subreaper, and tells which generation a notify datagram came from. It
tells the watchdog (gapless.proc.watchdog) each generation's process group, so
that a manager killed outright leaves nothing serving behind it.

Example::

    children = Children(selector, log, on_exit=lambda proc: ...)
    proc = children.spawn(2, ["python", "app.py"], listeners, env)
    # later, on SIGCHLD:
    children.reap()
"""

from __future__ import annotations

import functools
import os
import selectors
import signal
import socket
from collections.abc import Callable, Mapping, Sequence

from ..proc.spawn import Child, ExitStatus, spawn
from ..proc.subreaper import group_members
from ..proc.watchdog import Watchdog
from ..systemd.notify_receiver import in_process_tree
from .eventlog import EventLog
from .genproc import STREAMS as _STREAMS
from .genproc import GenerationProcess
from .warm import ForkServer

__all__ = ["Children", "GenerationProcess"]

_MAX_PARTIAL_LINE = 8192


class Children:
    """The live generations' processes, watched through one selector.

    Args:
        selector: the manager's; pidfds and output pipes are registered in it with
            callables as data.
        log: where child output and orphan reaping are logged.
        on_exit: called once with each generation whose leader was reaped.
        stop_signal: what the watchdog sends the generations if the manager dies.
        grace: seconds after which the watchdog SIGKILLs what is left of them.
        claim: reaps a child that is another's (a hook), given its pid; True if it
            was one. Any other unknown child is reaped here as an orphan.
    """

    def __init__(
        self,
        selector: selectors.BaseSelector,
        log: EventLog,
        on_exit: Callable[[GenerationProcess], None],
        stop_signal: int = signal.SIGTERM,
        grace: float = 30.0,
        claim: Callable[[int], bool] | None = None,
    ) -> None:
        self._selector = selector
        self._claim = claim
        self._log = log
        self._on_exit = on_exit
        self._stop_signal = stop_signal
        self._grace = grace
        self._procs: dict[int, GenerationProcess] = {}
        self.watchdog: Watchdog | None = None  # started with the first generation
        self.forkserver = ForkServer(selector, log)

    def spawn(
        self,
        number: int,
        command: Sequence[str],
        listeners: Sequence[tuple[str | None, socket.socket]],
        env: Mapping[str, str],
        death_signal: int | None = None,
        warm: bool = False,
    ) -> GenerationProcess:
        """Start generation ``number`` in a process group of its own; its leader gets
        ``death_signal`` if the manager dies (see :func:`gapless.proc.spawn.spawn`).
        With ``warm``, it is forked by the fork server if that can serve ``command``
        (else it starts cold, and the log says why).

        Raises:
            SuccessorSpawnError: the command could not be executed.
            InheritanceError: a listener name is invalid.
        """
        self._start_watchdog()
        if warm and self.forkserver.command == list(command):
            socks, names = [sock for _, sock in listeners], [name for name, _ in listeners]
            forked = self.forkserver.fork(socks, names, env, death_signal or 0)
            if isinstance(forked, Child):
                return self._watch(GenerationProcess(number, forked, start="warm"))
            self._log.event("cold", f"generation {number} starts cold: {forked}", generation=number)
        child = spawn(
            command,
            listeners=[sock for _, sock in listeners],
            names=[name for name, _ in listeners],
            env=env,
            new_process_group=True,
            capture_stderr=True,
            capture_stdout=True,
            death_signal=death_signal,
        )
        return self._watch(GenerationProcess(number, child))

    def adopt_watchdog(self, state: Mapping[str, int] | None) -> None:
        """After an exec in place: the watchdog ``{"pid", "fd"}`` the replaced manager
        started (None from a gapless without one: a new one starts)."""
        if state is None:
            return
        try:
            self.watchdog = Watchdog(
                state["pid"], state["fd"], self._stop_signal, self._grace, self._log.format
            )
        except OSError as exc:  # its pipe did not survive the exec: it has fired
            self._log.event("warning", f"cannot adopt the watchdog: {exc.strerror}")

    def adopt(
        self, number: int, pid: int, stderr_fd: int | None, stdout_fd: int | None = None
    ) -> GenerationProcess:
        """Watch a generation this process already runs: after an exec in place,
        its leader ``pid`` is still our child and ``stderr_fd``, ``stdout_fd`` still
        our pipes."""
        for fd in (stderr_fd, stdout_fd):
            if fd is not None:
                os.set_inheritable(fd, False)
        self._start_watchdog()
        child = Child(pid, stderr_fd, process_group=True, stdout_fd=stdout_fd)
        return self._watch(GenerationProcess(number, child, start=None))  # not handed over

    def _start_watchdog(self) -> None:
        if self.watchdog is not None:
            return
        try:
            self.watchdog = Watchdog.start(self._stop_signal, self._grace, self._log.format)
        except OSError as exc:
            self._log.event(
                "warning",
                f"cannot start the watchdog ({exc.strerror}): if the manager is killed "
                "outright, its generations' workers may serve on; retried at the next start",
            )
            return
        for proc in self.live():
            self.watchdog.watch(proc.pid)

    def _watch(self, proc: GenerationProcess) -> GenerationProcess:
        self._procs[proc.number] = proc
        if self.watchdog is not None:
            self.watchdog.watch(proc.pid)  # its process group: its pgid is its pid
        child = proc.child
        self._selector.register(child.pidfd, selectors.EVENT_READ, lambda: self._collect(proc))
        for stream in _STREAMS:
            fd = proc.fd(stream)
            if fd is not None:
                pump = functools.partial(self.pump, proc, stream)
                self._selector.register(fd, selectors.EVENT_READ, pump)
        return proc

    def pump(self, proc: GenerationProcess, stream: str = "stderr") -> None:
        """Forward what the child wrote to ``stream``, a bounded amount per call."""
        for _ in range(16):  # so that a chatty child cannot starve the loop
            fd = proc.fd(stream)
            if fd is None:
                return
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not data:
                self._end_of_stream(proc, stream)
                return
            if stream == "stderr":
                proc.tail.feed(data)
            *lines, partial = (proc.partial.get(stream, b"") + data).split(b"\n")
            if len(partial) > _MAX_PARTIAL_LINE:
                lines.append(partial)
                partial = b""
            proc.partial[stream] = partial
            for line in lines:
                self._log.output(proc.number, proc.pid, line, stream)

    def _end_of_stream(self, proc: GenerationProcess, stream: str) -> None:
        fd = proc.fd(stream)
        assert fd is not None
        self._selector.unregister(fd)
        proc.close_fd(stream)
        if partial := proc.partial.pop(stream, b""):
            self._log.output(proc.number, proc.pid, partial, stream)
        if proc.released and not proc.piped:
            self._procs.pop(proc.number, None)
            proc.child.close()

    def reap(self) -> None:
        """On SIGCHLD: reap every child that exited, known generations first-hand.

        A known leader is reaped by its own :meth:`Child.poll`, so its status reaches
        the manager; any other child (an orphan adopted as subreaper) is reaped here.
        """
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            if self.watchdog is not None and info.si_pid == self.watchdog.pid:
                self._replace_watchdog()
                continue
            owned = self.forkserver.reap(info.si_pid)
            if owned is not None:
                if not owned:
                    return  # its pidfd will tell
                continue
            if self._claim is not None and self._claim(info.si_pid):
                continue
            proc = self.by_pid(info.si_pid)
            if proc is not None:
                self._collect(proc)
                if proc.status is None:
                    return  # not reapable after all; the pidfd will tell
                continue
            _, status = os.waitpid(info.si_pid, os.WNOHANG)
            described = ExitStatus(os.waitstatus_to_exitcode(status)).describe()
            self._log.event(
                "reaped", f"reaped orphan pid {info.si_pid}: {described}", pid=info.si_pid
            )

    def start_forkserver(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        """Start a fork server for ``command`` unless one runs (gapless.run.warm)."""
        self.forkserver.start(command, env)

    def retire_forkserver(self, why: str) -> None:
        self.forkserver.retire(why)

    def _replace_watchdog(self) -> None:
        watchdog = self.watchdog
        assert watchdog is not None
        old = watchdog.pid
        _, status = os.waitpid(old, 0)
        returncode = os.waitstatus_to_exitcode(status)
        described = ExitStatus(returncode).describe()
        if returncode >= 0:  # it failed on its own: a restart would only fail again
            self.watchdog = None  # tried again at the next start
            self._log.event("warning", f"the watchdog (pid {old}) {described}; not restarted")
            return
        try:
            watchdog.restart()
        except OSError as exc:
            self.watchdog = None  # the next start tries again
            self._log.event("warning", f"the watchdog (pid {old}) {described}; {exc.strerror}")
            return
        self._log.event(
            "watchdog",
            f"the watchdog (pid {old}) {described}; started another as pid {watchdog.pid}",
            pid=watchdog.pid,
        )

    def _collect(self, proc: GenerationProcess) -> None:
        if proc.status is not None:
            return
        status = proc.child.poll()
        if status is None:
            return
        proc.status = status
        self._selector.unregister(proc.child.pidfd)
        for stream in _STREAMS:  # what it wrote just before exiting belongs to its story
            self.pump(proc, stream)
        self._on_exit(proc)

    def process(self, number: int) -> GenerationProcess | None:
        """Generation ``number``'s process, until it is released and its pipes closed."""
        return self._procs.get(number)

    def by_pid(self, pid: int) -> GenerationProcess | None:
        for proc in self._procs.values():
            if proc.pid == pid and proc.status is None:
                return proc
        return None

    def sender(self, pid: int, first: int | None = None) -> GenerationProcess | None:
        """The generation whose tree holds ``pid`` (a notify sender); ``first`` is
        tried before the others."""
        order = sorted(self._procs.values(), key=lambda proc: proc.number != first)
        for proc in order:
            if proc.status is None and in_process_tree(pid, proc.pid):
                return proc
        return None

    def lingering(self, proc: GenerationProcess) -> bool:
        """Whether the generation's process group still has live members."""
        return bool(group_members(proc.pid))

    def release(self, number: int) -> None:
        """Forget an exited generation. Its output pipes stay open until EOF: a
        process that left its group (a daemon) may still write to them."""
        proc = self._procs.get(number)
        if proc is None or proc.released:
            return
        proc.released = True
        if self.watchdog is not None:
            self.watchdog.forget(proc.pid)
        if not proc.piped:
            self._procs.pop(number)
            proc.child.close()

    def live(self) -> list[GenerationProcess]:
        return [proc for proc in self._procs.values() if not proc.released]

    def close(self) -> None:
        """Kill whatever still runs (only after an error in the manager) and close all;
        the watchdog, with no group left to guard, exits."""
        for proc in list(self._procs.values()):
            if proc.status is None:
                self._selector.unregister(proc.child.pidfd)
                proc.child.kill_group(signal.SIGKILL)
                proc.child.wait(5.0)
            for fd in (proc.fd(stream) for stream in _STREAMS):
                if fd is not None:
                    self._selector.unregister(fd)
            proc.child.close()
            if self.watchdog is not None:
                self.watchdog.forget(proc.pid)
        self._procs.clear()
        self.forkserver.close()
        if self.watchdog is not None:
            self.watchdog.close()
            self.watchdog = None
