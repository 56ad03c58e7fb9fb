"""The manager re-executing itself in place: on request, and to recover from a bug.

``gapless upgrade`` asks for it: the target interpreter is checked beside the
loop (gapless.run.upgrade_check), and only a quiet manager (no reload under way,
no generation being killed) is replaced. An unexpected exception in the
manager's loop is the other reason (invariant 7): the manager is then in an
unknown state, so rather than go on with it, or die and take its generations
along, it logs the traceback and execs the same interpreter, carrying over its
pid, sockets and generations as they are (gapless.run.reexec). Only the clients
waiting for an answer lose their connection.

Example::

    in_place = InPlace(log, selector, environ, upstream, handover, refusal, pending, HANDLED)
    table.register("upgrade", "...", in_place.upgrade, {"python": python_problem})
    ...
    except Exception as exc:   # in the loop
        in_place.recover(exc)  # returns only if the exec was impossible
"""

from __future__ import annotations

import dataclasses
import functools
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from ..errors import UpgradeError
from .bugs import report_bug
from .control import ControlConnection, Message, error, reply
from .eventlog import EventLog
from .reexec import Handover, exec_in_place, export_state
from .upgrade_check import TargetCheck
from .upstream import Upstream

__all__ = ["RECOVERY_LIMIT", "RECOVERY_WINDOW", "InPlace"]

#: At most this many re-executions to recover within RECOVERY_WINDOW seconds: a
#: bug that the resumed state triggers again must not become a loop of execs.
RECOVERY_LIMIT = 5
RECOVERY_WINDOW = 60.0


class InPlace:
    """Carries out upgrades and recoveries; see the module docstring.

    Args:
        log: the event log.
        selector: the manager's, for the target check.
        environ: the environment of the exec'd manager (its children's, as given).
        upstream: whose ``NOTIFY_SOCKET`` the exec'd manager keeps.
        handover: what to hand over, asked for at the moment of the exec.
        refusal: why the manager's sockets cannot be kept across an exec, or None
            (``--handoff`` and ``--health-bind`` sockets are not).
        pending: takes the signals caught but not handled yet.
        blocked: the signals the manager handles, blocked across the exec.
    """

    def __init__(
        self,
        log: EventLog,
        selector: selectors.BaseSelector,
        environ: Mapping[str, str],
        upstream: Upstream,
        handover: Callable[[], Handover],
        refusal: Callable[[], str | None],
        pending: Callable[[], list[signal.Signals]],
        blocked: Sequence[signal.Signals],
    ) -> None:
        self._log = log
        self._selector = selector
        self._environ = environ
        self._upstream = upstream
        self._handover = handover
        self._refusal = refusal
        self._pending = pending
        self._blocked = blocked
        self._check: TargetCheck | None = None

    # The upgrade command ------------------------------------------------------

    def upgrade(self, connection: ControlConnection, request: Message) -> None:
        """Check ``request["python"]`` (default: this interpreter) beside the loop,
        then exec it; the client is answered just before the exec."""
        python = str(request.get("python", sys.executable))  # checked by python_problem
        problem = self._upgrade_refusal()
        if problem is None and self._check is not None:
            problem = f"cannot upgrade now: {self._check.python} is being checked; retry soon"
        if problem is None:
            on_done = functools.partial(self._checked, connection, python)
            try:
                self._check = TargetCheck(python, self._env(), self._selector, on_done)
            except UpgradeError as exc:
                problem = str(exc)
        if problem is not None:
            connection.send(error(problem))
            return
        connection.waiting += 1
        self._log.event("upgrading", f"checking {python} before re-executing pid {os.getpid()}")

    def _upgrade_refusal(self) -> str | None:
        problem = self._handover().driver.upgrade_refusal() or self._refusal()
        return None if problem is None else f"cannot upgrade now: {problem}; retry in a moment"

    def _checked(self, connection: ControlConnection, python: str, problem: str | None) -> None:
        connection.waiting -= 1
        problem = problem or self._upgrade_refusal()  # things may have changed meanwhile
        if problem is not None:
            connection.send(error(problem))
            return
        self._log.event("upgrading", f"re-executing pid {os.getpid()} in place with {python}")
        connection.send(reply(True, message=f"re-executing pid {os.getpid()} with {python}"))
        self._exec(python, self._handover())

    # Time and children ----------------------------------------------------------

    def wake_at(self) -> float | None:
        return None if self._check is None else self._check.wake_at()

    def tick(self, now: float) -> None:
        if self._check is not None:
            self._check.tick(now)
            if self._check.over:
                self._check = None

    def collect(self) -> None:
        """On SIGCHLD, before the generations' reaping: reap the target check."""
        if self._check is not None:
            self._check.collect()
            if self._check.over:
                self._check = None

    def close(self) -> None:
        if self._check is not None:
            self._check.close()
            self._check = None

    # Recovery -----------------------------------------------------------------

    def recover(self, exc: Exception) -> None:
        """Log ``exc``, raised by the manager's loop, and exec this interpreter in
        place. Returns only if that was impossible: the loop then goes on."""
        report_bug(self._log, "the manager's loop", exc)
        now = time.monotonic()  # CLOCK_MONOTONIC: the same across the exec
        handover = self._handover()
        recent = tuple(when for when in handover.recovered_at if now - when < RECOVERY_WINDOW)
        refusal = self._refusal()
        if refusal is None and len(recent) >= RECOVERY_LIMIT:
            refusal = f"{len(recent)} recoveries in {RECOVERY_WINDOW:g} s already"
        if refusal is not None:
            self._log.event("warning", f"cannot re-execute to recover: {refusal}; serving on")
            return
        try:
            handover = dataclasses.replace(
                handover, recoveries=handover.recoveries + 1, recovered_at=(*recent, now)
            )
            handover.driver.kill_unadoptable()
            self._log.event(
                "recovering",
                f"re-executing pid {os.getpid()} in place to recover "
                f"(recovery {handover.recoveries})",
            )
            self._exec(sys.executable, handover)
        except Exception as again:  # the loop goes on, rather than end the service
            report_bug(self._log, "the recovery", again)

    # The exec -----------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(self._environ)
        if self._upstream.address:
            env["NOTIFY_SOCKET"] = self._upstream.address
        return env

    def _exec(self, python: str, handover: Handover) -> None:
        state, fds = export_state(handover)
        try:
            exec_in_place(python, state, fds, self._env(), self._blocked, self._pending())
        except OSError as exc:
            self._log.event("failed", f"cannot exec {python}: {exc.strerror}; serving on")
