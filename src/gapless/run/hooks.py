"""``gapless run``'s hooks: shell commands run before a reload, on ready, on a failed reload.

As gunicorn's server hooks (``on_reload``, ``when_ready``), but commands, not
Python functions: the manager runs any server, and a shell command can run
``python -m mymodule`` as well as ``nginx -t``. Each runs as ``/bin/sh -c CMD``
in a process group of its own, watched by the manager's selector (its pidfd
and its output pipes), never waited on: ``status`` and everything else are
served while a hook runs (as gapless.run.upgrade_check does for its check).

* ``before-reload`` runs to completion before a requested reload's generation
  starts; a non-zero exit, a signal or the timeout fails that reload with a
  one-line reason, and the active generation keeps serving (invariant 4).
* ``on-ready`` and ``on-reload-failed`` are fired and forgotten: their outcome
  is logged, nothing waits for them.

Every hook is killed (its whole group, SIGKILL) at ``--hook-timeout``, and at
the manager's exit. Its stdout and stderr are relayed line by line, prefixed
``[hook NAME]``. Its environment is the generations' one plus
``GAPLESS_EVENT``, ``GAPLESS_GENERATION``, ``GAPLESS_PID``, ``GAPLESS_REASON``
and ``GAPLESS_MANAGER_PID``.

Example::

    hooks = Hooks(HookCommands(before_reload="nginx -t"), env, selector, log)
    deadline = hooks.before_reload(2, active_pid, on_done=lambda problem: ...)
    hooks.fire("on-ready", 2, pid)
    # in the loop: hooks.wake_at(), hooks.tick(now); on SIGCHLD hooks.collect()
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
from dataclasses import dataclass

from .eventlog import EventLog

__all__ = ["HOOK_TIMEOUT", "SHELL", "HookCommands", "HookRun", "Hooks"]

HOOK_TIMEOUT = 30.0
SHELL = "/bin/sh"
_MAX_LINE = 8192
_SHOWN = 120  # characters of a command quoted in a message

OnDone = Callable[[str | None], None]


@dataclass(frozen=True)
class HookCommands:
    """The hook commands configured (None: no hook) and their timeout in seconds."""

    before_reload: str | None = None
    on_ready: str | None = None
    on_reload_failed: str | None = None
    timeout: float = HOOK_TIMEOUT

    def command(self, name: str) -> str | None:
        return {
            "before-reload": self.before_reload,
            "on-ready": self.on_ready,
            "on-reload-failed": self.on_reload_failed,
        }[name]


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
        """Relay what is in the pipe now; False once it is at its end."""
        while True:
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
                "hook-output", f"[hook {self.name}] {text}", hook=self.name, stream=stream
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


class Hooks:
    """The hooks of one manager: the before-reload gate and the hooks fired.

    Args:
        commands: what runs for each hook.
        environ: the generations' environment, which the hooks get too.
        selector: the manager's.
        log: the event log.
        shell: what runs each command (``SHELL -c CMD``).
    """

    def __init__(
        self,
        commands: HookCommands,
        environ: Mapping[str, str],
        selector: selectors.BaseSelector,
        log: EventLog,
        shell: str = SHELL,
    ) -> None:
        self.commands = commands
        self._environ = environ
        self._selector = selector
        self._log = log
        self._shell = shell
        self._runs: list[HookRun] = []
        self._gating: tuple[int, HookRun] | None = None  # a generation and its before-reload

    @property
    def gates_reloads(self) -> bool:
        return self.commands.before_reload is not None

    def busy(self) -> str | None:
        """Which hook runs, or None: a manager exec'd in place could not watch it."""
        for run in self._runs:
            if not run.over:
                return f"the {run.name} hook {shown(run.command)} runs (pid {run.pid})"
        return None

    def before_reload(self, generation: int, active_pid: int | None, on_done: OnDone) -> float:
        """Run the before-reload hook ahead of ``generation``; ``on_done`` gets its
        verdict (None: go on). Returns its deadline (monotonic)."""
        command = self.commands.before_reload
        assert command is not None, "no before-reload hook"

        def done(problem: str | None) -> None:
            self._gating = None
            on_done(problem)

        env = self._env("before-reload", generation, active_pid, None)
        run = self._start("before-reload", command, env, done)
        if not run.over:
            self._gating = (generation, run)
        return run.deadline

    def fire(self, name: str, generation: int, pid: int | None, reason: str | None = None) -> None:
        """Run the ``on-ready`` or ``on-reload-failed`` hook, if any, and forget it."""
        command = self.commands.command(name)
        if command is not None:
            self._start(name, command, self._env(name, generation, pid, reason), None)

    def cancel(self, generation: int) -> bool:
        """The manager stops while ``generation`` waits for its before-reload hook:
        kill the hook. False if the generation waits for no hook."""
        if self._gating is None or self._gating[0] != generation:
            return False
        _, run = self._gating
        self._gating = None
        run.forget()
        run.kill()
        self._log.event("hook", f"{run.name} hook killed: the manager stops", hook=run.name)
        return True

    def _env(
        self, name: str, generation: int, pid: int | None, reason: str | None
    ) -> dict[str, str]:
        env = {
            **self._environ,
            "GAPLESS_EVENT": name,
            "GAPLESS_GENERATION": str(generation),
            "GAPLESS_PID": "" if pid is None else str(pid),
            "GAPLESS_MANAGER_PID": str(os.getpid()),
        }
        if reason is not None:
            env["GAPLESS_REASON"] = reason
        return env

    def _start(
        self, name: str, command: str, env: Mapping[str, str], on_done: OnDone | None
    ) -> HookRun:
        timeout = self.commands.timeout
        run = HookRun(name, command, env, self._selector, self._log, timeout, on_done, self._shell)
        if not run.over:
            self._runs.append(run)
        return run

    def claim(self, pid: int) -> bool:
        """Reap ``pid`` if it is a hook's (for the orphan reaper, which would steal
        its exit status otherwise); True if it was."""
        for run in self._runs:
            if run.pid == pid and not run.over:
                run.collect()
                self._prune()
                return True
        return False

    def collect(self) -> None:
        """On SIGCHLD, before any other reaping: reap the hooks that exited."""
        for run in list(self._runs):
            run.collect()
        self._prune()

    def wake_at(self) -> float | None:
        return min(
            (when for run in self._runs if (when := run.wake_at()) is not None), default=None
        )

    def tick(self, now: float) -> None:
        for run in list(self._runs):
            run.tick(now)
        self._prune()

    def _prune(self) -> None:
        self._runs = [run for run in self._runs if not run.over]

    def close(self) -> None:
        """Kill every hook still running (the manager exits, or execs to recover)."""
        self._gating = None
        for run in self._runs:
            if not run.over:
                self._log.event(
                    "hook",
                    f"{run.name} hook (pid {run.pid}) killed: the manager exits",
                    hook=run.name,
                )
            run.close()
        self._runs = []
