"""The target of ``gapless upgrade``: its path checked at once, its gapless beside
the loop.

A client names the interpreter to exec (``"python"``); the control command
checks the value first: a string, no NUL, an absolute path to an executable
regular file. Then ``python -m gapless.reexec --check`` must print the state
version this manager writes. That takes a new interpreter's start-up (and an
unknown target may hang), so it runs as a child watched by the manager's
selector, through its stdout and stderr pipes and its pidfd, with a deadline:
``status`` and everything else are served meanwhile.

Example::

    check = TargetCheck("/srv/venv2/bin/python", env, selector, on_done)
    # in the loop: the timeout includes check.wake_at(); check.tick(now);
    # on SIGCHLD, check.collect() before anything else reaps children
"""

from __future__ import annotations

import functools
import os
import selectors
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Mapping

from ..errors import UpgradeError
from .reexec import STATE_VERSION

__all__ = ["CHECK_TIMEOUT", "TargetCheck", "python_problem"]

CHECK_TIMEOUT = 30.0
_MAX_OUTPUT = 65536

_JSON_TYPES = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
               str: "a string", list: "an array", dict: "an object"}  # fmt: skip


def python_problem(value: object) -> str | None:
    """What is wrong with ``value`` as an upgrade's ``"python"``, or None."""
    if not isinstance(value, str):
        kind = _JSON_TYPES.get(type(value), type(value).__name__)
        return f'"python" must be a string, the absolute path of an interpreter, not {kind}'
    if "\0" in value:
        return f'"python" {value!r} contains a NUL byte; pass the interpreter\'s absolute path'
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        return f'"python" {value!r} is not a valid path; pass the interpreter\'s absolute path'
    target = f"cannot upgrade with {value!r}"
    if not os.path.isabs(value):
        return f"{target}: not an absolute path; pass the full path, e.g. /srv/venv/bin/python"
    try:
        info = os.stat(value)
    except FileNotFoundError:
        return f"{target}: no such file; check the path"
    except OSError as exc:
        return f"{target}: {exc.strerror}; check the path"
    if not stat.S_ISREG(info.st_mode):
        return f"{target}: not a regular file; pass the interpreter's path"
    if not os.access(value, os.X_OK):
        return f"{target}: not executable; pass the interpreter's path"
    return None


class TargetCheck:
    """``python -m gapless.reexec --check``, run beside the loop.

    Args:
        python: the target interpreter, checked by :func:`python_problem`.
        env: its environment.
        selector: the manager's; the pipes and the pidfd are registered in it.
        on_done: called once, with None if the target can resume this manager's
            state, else the one-line reason it cannot.

    Raises:
        UpgradeError: the check could not be started.
    """

    def __init__(
        self,
        python: str,
        env: Mapping[str, str],
        selector: selectors.BaseSelector,
        on_done: Callable[[str | None], None],
    ) -> None:
        self.python = python
        self._selector = selector
        self._on_done: Callable[[str | None], None] | None = on_done
        self.deadline = time.monotonic() + CHECK_TIMEOUT
        argv = [python, "-m", "gapless.reexec", "--check"]
        pipe = subprocess.PIPE
        try:
            self._process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe, env=dict(env)
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            raise UpgradeError(f"cannot upgrade with {python!r}: {exc}; check the path") from None
        try:
            self._pidfd: int | None = os.pidfd_open(self._process.pid)
        except OSError as exc:  # no fd left: a check we cannot watch must not run
            self._process.kill()
            self._process.wait()
            self._close_pipes()
            raise UpgradeError(f"cannot watch the upgrade check: {exc.strerror}") from None
        assert self._process.stdout is not None and self._process.stderr is not None
        self._stdout = self._process.stdout.fileno()
        self._stderr = self._process.stderr.fileno()
        self._output = {self._stdout: bytearray(), self._stderr: bytearray()}
        for fd in self._output:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ, functools.partial(self._read, fd))
        self._open = set(self._output)
        selector.register(self._pidfd, selectors.EVENT_READ, self.collect)

    @property
    def over(self) -> bool:
        """Answered, and the process reaped: the manager may start another check."""
        return self._on_done is None and self._pidfd is None

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, _MAX_OUTPUT)
        except BlockingIOError:
            return
        if data:
            output = self._output[fd]
            output += data[: max(0, _MAX_OUTPUT - len(output))]
            return
        self._selector.unregister(fd)
        self._open.discard(fd)
        self._settle()

    def collect(self) -> None:
        """Reap the check if it exited; call it on SIGCHLD before children are reaped
        as orphans, so that its exit status is ours."""
        if self._pidfd is None or self._process.poll() is None:
            return
        self._selector.unregister(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self._settle()

    def _settle(self) -> None:
        if self._pidfd is None and not self._open:
            self._answer(self._verdict())

    def _verdict(self) -> str | None:
        out = self._output[self._stdout].decode(errors="replace").strip()
        if self._process.returncode == 0 and out == str(STATE_VERSION):
            return None
        err = self._output[self._stderr].decode(errors="replace").strip()
        why = ((err.splitlines() or [out])[-1] or "no answer")[:200]
        return (
            f"cannot upgrade with {self.python!r}: its gapless cannot resume state version "
            f"{STATE_VERSION} ({why}); install a compatible gapless there"
        )

    def wake_at(self) -> float | None:
        return None if self._on_done is None else self.deadline

    def tick(self, now: float) -> None:
        """Past the deadline: kill the check (it is reaped once it is gone) and answer."""
        if self._on_done is None or now < self.deadline:
            return
        if self._pidfd is not None:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        self._answer(
            f"cannot upgrade with {self.python!r}: no answer within {CHECK_TIMEOUT:g} s "
            "from its gapless; check the interpreter"
        )

    def _answer(self, problem: str | None) -> None:
        on_done, self._on_done = self._on_done, None
        for fd in list(self._open):
            self._selector.unregister(fd)
        self._open.clear()
        self._close_pipes()
        if on_done is not None:
            on_done(problem)

    def close(self) -> None:
        """The manager stops: kill the check and let go of it."""
        self._on_done = None
        if self._pidfd is not None:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            self._selector.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self._answer(None)

    def _close_pipes(self) -> None:
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()
