"""Warm starts: the manager's side of the fork server (:mod:`gapless.run.zygote`).

A cold generation pays an interpreter start and its server stack's imports on
the CPU the serving generation needs. With ``ManagerConfig.warm``, the manager
starts a fork server once a generation is ready (never beside a start), and
forks the next generations from it: the generation then only imports the
application. A generation starts cold instead, and says why in the log, when
the fork server is not ready, answers that what it holds went stale (a module
file, the interpreter, the environment changed), does not answer within
:data:`ANSWER_TIMEOUT`, or the reload asked for it (``gapless reload --cold``);
a stale or failed fork server is replaced once the next generation is ready.

Only a command of the form ``PYTHON -m MODULE ARG...`` can start warm, and only
under a manager that is a child subreaper (the generation must become its child).

Example::

    warm = ForkServer(selector, log)
    warm.start(["python", "-m", "gapless.serving.child", "app:app"], env)
    child_or_reason = warm.fork(listeners, names, env, death_signal)
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import GaplessError
from ..proc.spawn import Child, spawn
from .eventlog import EventLog

__all__ = ["ANSWER_TIMEOUT", "ForkServer", "warm_command"]

#: Seconds the manager waits for the fork server's answer; it forks twice, a few ms.
ANSWER_TIMEOUT = 2.0
_PR_GET_CHILD_SUBREAPER = 37


def warm_command(command: Sequence[str]) -> tuple[str, list[str]] | None:
    """``(module, args)`` of a ``PYTHON -m MODULE ARG...`` command run by this
    interpreter, or None when it cannot start warm."""
    if len(command) < 3 or command[1] != "-m":
        return None
    if os.path.realpath(command[0]) != os.path.realpath(sys.executable):
        return None
    return command[2], list(command[3:])


def _is_subreaper() -> bool:
    value = ctypes.c_int(0)
    libc = ctypes.CDLL(None, use_errno=True)
    asked = libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) == 0
    return asked and bool(value.value)


class ForkServer:
    """The fork server the manager keeps: at most one serving, older ones exiting."""

    def __init__(self, selector: selectors.BaseSelector, log: EventLog) -> None:
        self._selector = selector
        self._log = log
        self._channel: socket.socket | None = None
        self._process: Child | None = None
        self._retired: list[Child] = []
        self.ready = False
        self.command: list[str] | None = None
        self._why = "no fork server is ready yet"

    @property
    def running(self) -> bool:
        return self._channel is not None

    def start(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        """Start a fork server for ``command`` (a no-op if one runs or it cannot)."""
        target = warm_command(command)
        if self._channel is not None or target is None:
            return
        if not _is_subreaper():
            self._log.event("warning", "generations start cold: the manager is no child subreaper")
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [command[0], "-m", "gapless.run.zygote", "-m", target[0], *target[1]]
        try:
            with theirs:
                self._process = spawn(
                    argv,
                    listeners=[theirs],
                    names=["forkserver"],
                    env=env,
                    new_process_group=True,  # a terminal's ^C is for the manager
                    death_signal=signal.SIGKILL,
                )
        except GaplessError as exc:
            ours.close()
            self._log.event("warning", f"cannot start the fork server: {exc}")
            return
        self._channel = ours
        self.command = list(command)
        self._selector.register(ours, selectors.EVENT_READ, self._on_message)

    def _on_message(self) -> None:
        running = self.running
        message = self._receive(timeout=0)
        if message is None:
            if running and not self.running:
                self._log.event("warning", self._why)
            return
        if message.get("ready"):
            self.ready = True
            pid = self._process.pid if self._process else None
            self._log.event(
                "forkserver",
                f"fork server ready (pid {pid}, {message.get('modules')} files watched, "
                f"{message.get('seconds')} s to warm up)",
                pid=pid,
            )
            return
        self.retire(f"the fork server failed: {message.get('error', message)}")
        self._log.event("warning", self._why)

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        """One message; on EOF or garbage the fork server is retired and None returned."""
        channel = self._channel
        assert channel is not None
        channel.settimeout(timeout if timeout > 0 else 0.0)
        try:
            data = channel.recv(1 << 16)
        except BlockingIOError:
            return None
        except (TimeoutError, OSError) as exc:
            self.retire(f"the fork server did not answer ({exc})", kill=True)
            return None
        if not data:
            self.retire("the fork server exited")
            return None
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self.retire("the fork server sent garbage", kill=True)
            return None
        return message

    def fork(
        self,
        listeners: Sequence[socket.socket],
        names: Sequence[str | None],
        env: Mapping[str, str],
        death_signal: int,
    ) -> Child | str:
        """A generation forked warm, or why it must start cold."""
        if self._channel is None or not self.ready:
            return self._why
        stderr_r, stderr_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        go_r, go_w = os.pipe()
        env = {
            **env,
            "LISTEN_FDS": str(len(listeners)),
            "LISTEN_FDNAMES": ":".join(name or "unknown" for name in names),
        }
        request = {
            "argv": self.command[3:] if self.command else [],
            "env": env,
            "cwd": os.getcwd(),
            "manager": os.getpid(),
            "death_signal": death_signal,
        }
        # The order gapless.run.zygote._place_fds expects.
        fds = [go_r, stderr_w, stdout_w, *(sock.fileno() for sock in listeners)]
        try:
            socket.send_fds(self._channel, [json.dumps(request).encode()], fds)
            answer = self._receive(timeout=ANSWER_TIMEOUT)
        except OSError as exc:
            self.retire(f"cannot reach the fork server ({exc.strerror})", kill=True)
            answer = None
        finally:
            for fd in (go_r, stderr_w, stdout_w):
                os.close(fd)
        pid = answer.get("pid") if answer else None
        if not isinstance(pid, int):
            for fd in (go_w, stderr_r, stdout_r):  # a generation forked after all
                os.close(fd)  # reads EOF on go and exits untouched
            if answer is not None:
                self.retire(str(answer.get("stale") or answer.get("error") or answer))
            return self._why
        try:
            child = Child(pid, stderr_r, process_group=True, stdout_fd=stdout_r)
        except OSError as exc:
            for fd in (go_w, stderr_r, stdout_r):
                os.close(fd)
            return f"cannot watch the forked generation ({exc.strerror})"
        os.set_blocking(stderr_r, False)
        os.set_blocking(stdout_r, False)
        os.write(go_w, b"g")
        os.close(go_w)
        return child

    def retire(self, why: str, kill: bool = False) -> None:
        """Stop using the fork server, for ``why``: it exits on EOF (or SIGKILL) and
        is reaped later; the next generation starts cold and then a new one starts."""
        self._why = why
        self.ready = False
        if self._channel is not None:
            self._selector.unregister(self._channel)
            self._channel.close()
            self._channel = None
        if self._process is not None:
            if kill:
                self._process.send_signal(signal.SIGKILL)
            self._retired.append(self._process)
            self._process = None

    def reap(self, pid: int) -> bool | None:
        """Reap ``pid`` if it is a fork server of ours: True if reaped, False if ours
        but not reapable yet, None if not ours."""
        for child in [self._process, *self._retired]:
            if child is not None and child.pid == pid:
                if child.poll() is None:
                    return False
                if child is self._process:
                    self.retire("the fork server exited")
                self._retired.remove(child)
                child.close()
                return True
        return None

    def close(self) -> None:
        self.retire("the manager stops")
