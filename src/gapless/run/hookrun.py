"""One hook process of ``gapless run`` (gapless.run.hooks), from its start to its reaping.

``SHELL -c CMD`` in a session (so a process group) of its own, stdin from
/dev/null, stdout and stderr on pipes relayed line by line to the manager's log
(``[hook NAME] ...``). Its pidfd and pipes are registered in the manager's
selector: nothing waits on it. At its deadline its whole group is killed and it
is answered at once; it is reaped when its pidfd says so (or when the orphan
reaper finds it first and hands it back, see ``Children(claim=...)``).

Example::

    run = HookRun("on-ready", "curl -s localhost:9000/ready", env, selector, log, 30.0)
    # in the loop: run.wake_at(), run.tick(now); its pidfd calls run.collect()
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping

from .eventlog import EventLog

__all__ = ["SHELL", "HookRun", "OnDone", "shown"]

SHELL = "/bin/sh"
_MAX_LINE = 8192
_SHOWN = 120  # characters of a command quoted in a message

#: Called once with None (the hook exited 0) or the one-line reason it failed.
OnDone = Callable[[str | None], None]


def shown(command: str) -> str:
    """The command as messages quote it: in backquotes, cut if long."""
    return f"`{command if len(command) <= _SHOWN else command[: _SHOWN - 3] + '...'}`"


class HookRun:
    """One hook process, from its start to its reaping.

    Args:
        name: ``before-reload``, ``on-ready`` or ``on-reload-failed``.
        command: the shell command.
        env: its environment.
        selector: the manager's; the pidfd and pipes are registered in it.
        log: where its output and outcome go.
        timeout: seconds before its group is killed.
        on_done: called once, with None if it exited 0, else the one-line reason;
            on a failure to start, called before the constructor returns.
        shell: the shell that runs ``command``.
    """

    def __init__(
        self,
        name: str,
        command: str,
        env: Mapping[str, str],
        selector: selectors.BaseSelector,
        log: EventLog,
        timeout: float,
        on_done: OnDone | None = None,
        shell: str = SHELL,
    ) -> None:
        self.name = name
        self.command = command
        self._selector = selector
        self._log = log
        self._on_done = on_done
        self._timeout = timeout
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self._tail: collections.deque[str] = collections.deque(maxlen=5)
        self._partial: dict[int, bytes] = {}
        self._streams: dict[int, str] = {}
        self.pid: int | None = None
        self._pidfd: int | None = None
        self._answered = False
        self._process: subprocess.Popen[bytes] | None = None
        try:
            self._process = subprocess.Popen(
                [shell, "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(env),
                start_new_session=True,  # its own group: killed whole at its timeout
            )
            self._pidfd = os.pidfd_open(self._process.pid)
        except (OSError, subprocess.SubprocessError) as exc:
            self._cannot_start(exc)
            return
        self.pid = self._process.pid
        self._watch()
        log.event("hook", f"{self._label} started as pid {self.pid}", hook=name, pid=self.pid)

    @property
    def _label(self) -> str:
        return f"{self.name} hook {shown(self.command)}"

    @property
    def over(self) -> bool:
        """Answered and reaped: nothing of it is watched any more."""
        return self._answered and self._pidfd is None

    def _cannot_start(self, exc: BaseException) -> None:
        if self._process is not None:  # started, but no pidfd to watch it by
            self._process.kill()
            self._process.wait()
            self._close_pipes()
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self._answer(f"{self._label} could not start: {why}", level="error")

    def _watch(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None and self._process.stderr is not None
        for stream, pipe in (("stdout", self._process.stdout), ("stderr", self._process.stderr)):
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            self._streams[fd] = stream
            self._selector.register(fd, selectors.EVENT_READ, functools.partial(self._read, fd))
        assert self._pidfd is not None
        self._selector.register(self._pidfd, selectors.EVENT_READ, self.collect)

    def _read(self, fd: int) -> bool:
        """Relay what is in the pipe now, a bounded amount (a chatty hook must not
        starve the loop); False once it is at its end."""
        if fd not in self._streams:
            # A stale event: the pidfd's, in the same select() round, closed the pipe
            # (and its number may name another file by now).
            return False
        for _ in range(16):
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return True
            if not data:
                self._relay(fd, self._partial.pop(fd, b""), whole=True)
                self._selector.unregister(fd)
                del self._streams[fd]
                return False
            self._relay(fd, self._partial.pop(fd, b"") + data, whole=False)
        return True

    def _relay(self, fd: int, data: bytes, whole: bool) -> None:
        *lines, partial = data.split(b"\n")
        if partial and (whole or len(partial) > _MAX_LINE):
            lines.append(partial)
        elif partial:
            self._partial[fd] = partial
        stream = self._streams[fd]
        for line in lines:
            text = line.decode(errors="replace").rstrip("\r")
            if stream == "stderr" and text.strip():
                self._tail.append(text.strip())
            self._log.event(
                "hook-output",
                f"[hook {self.name}] {text}",
                hook=self.name,
                pid=self.pid,
                stream=stream,
                line=text,
            )

    def collect(self) -> None:
        """Reap the hook if its leader exited (on its pidfd, or on SIGCHLD first)."""
        if self._pidfd is None or self._process is None or self._process.poll() is None:
            return
        self._selector.unregister(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        for fd in list(self._streams):  # what it wrote before exiting is in the pipes
            if self._read(fd):
                self._selector.unregister(fd)  # a process it left behind holds it
                del self._streams[fd]
        self._close_pipes()
        self._answer(self._outcome())

    def _outcome(self) -> str | None:
        assert self._process is not None
        code = self._process.returncode
        how = f"exited {code}" if code >= 0 else f"killed by {_signal_name(-code)}"
        if self._answered:  # killed at its timeout, and answered then
            self._log.event("hook", f"{self._label} (pid {self.pid}) {how}", hook=self.name)
            return None
        if code == 0:
            took = f"{(time.monotonic() - self.started) * 1000:.0f} ms"
            self._log.event("hook", f"{self._label} exited 0 after {took}", hook=self.name)
            return None
        last = f": {self._tail[-1]}" if self._tail else ""
        return f"{self._label} {how}{last}"

    def wake_at(self) -> float | None:
        return None if self._answered or self._pidfd is None else self.deadline

    def tick(self, now: float) -> None:
        """Past the deadline: kill its group and answer (it is reaped once gone)."""
        if self._answered or self._pidfd is None or now < self.deadline:
            return
        self.kill()
        self._answer(f"{self._label} did not finish within {self._timeout:g} s; killed")

    def kill(self) -> None:
        """SIGKILL its whole group (reaped later, on its pidfd)."""
        if self.pid is not None and self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    def _answer(self, problem: str | None, level: str = "warning") -> None:
        if self._answered:
            return
        self._answered = True
        on_done, self._on_done = self._on_done, None
        if problem is not None:
            self._log.event("hook", problem, level=level, hook=self.name)
        if on_done is not None:
            on_done(problem)

    def forget(self) -> None:
        """Nobody waits for its outcome any more (the reload it gated was cancelled)."""
        self._on_done = None

    def close(self) -> None:
        """Kill it and let go of it (the manager exits)."""
        self.kill()
        self._answered = True
        self._on_done = None
        for fd in list(self._streams):
            self._selector.unregister(fd)
        self._streams.clear()
        if self._pidfd is not None:
            self._selector.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
            if self._process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(5.0)  # SIGKILLed: at once, unless stuck in the kernel
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self._process is None:
            return
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()


def _signal_name(number: int) -> str:
    try:
        return f"signal {number} ({signal.Signals(number).name})"
    except ValueError:
        return f"signal {number}"
