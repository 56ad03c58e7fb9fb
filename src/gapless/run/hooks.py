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
  Only requested reloads (SIGHUP, ``gapless reload``) wait for it: not
  generation 1, nor the replacement of an active generation that died.
* ``on-ready`` and ``on-reload-failed`` are fired and forgotten: their outcome
  is logged, nothing waits for them. ``on-reload-failed`` fires for a failed
  reload, not for a start cancelled by a stop nor for a failing generation 1
  (the manager exits then).

Commands, not ``module:function``: a Python hook in the manager's process
could block its loop or crash it (invariant 7), and ``python -m pkg.hook``
does the same job in a process of its own.

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

import os
import selectors
from collections.abc import Mapping
from dataclasses import dataclass

from .eventlog import EventLog
from .hookrun import SHELL, HookRun, OnDone, shown

__all__ = ["HOOK_TIMEOUT", "SHELL", "HookCommands", "HookRun", "Hooks"]

HOOK_TIMEOUT = 30.0


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
