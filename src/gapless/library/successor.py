"""Starting a successor and waiting, on events only, until it is ready or has failed.

The wait is one ``select`` over three things: the notify socket (READY=1), the
successor's pidfd (it exited) and its stderr pipe (forwarded to ours and kept
as a tail for the error message), plus a cancel pipe and the timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence

from ..errors import NotifyError, SuccessorExitedError, SuccessorTimeoutError, UpgradeError
from ..proc.spawn import Child, StderrTail, spawn
from ..systemd.notify_receiver import NotifyReceiver, in_process_tree
from .handshake import STDERR_VAR, successor_environ

__all__ = ["Cancel", "start_successor"]

log = logging.getLogger("gapless")


class Cancel:
    """A one-shot cancellation of a successor's start that a ``select`` can wait on
    (a pipe), safe to use from any thread.

    ``set()`` after ``close()`` does nothing: the pipe's fd numbers may name
    another file by then (a stop request as an upgrade completes), and a late
    byte would land in it. ``unless_set()`` guards the spawn: once ``set()``
    returns, the successor either was started (``entered``) or never will be.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read, self._write = os.pipe()
        self._set = False
        self._closed = False
        self.entered = False

    def set(self) -> None:
        with self._lock:
            if not self._set and not self._closed:
                os.write(self._write, b"x")
            self._set = True

    def is_set(self) -> bool:
        return self._set

    def fileno(self) -> int:
        return self._read

    @contextlib.contextmanager
    def unless_set(self) -> Iterator[None]:
        """Run the block unless cancelled; a ``set()`` meanwhile waits for it to end.

        Raises:
            UpgradeError: already cancelled; the block did not run.
        """
        with self._lock:
            if self._set:
                raise UpgradeError(
                    "upgrade cancelled before the successor started: this process is stopping"
                )
            self.entered = True
            yield

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._read)
                os.close(self._write)


def start_successor(
    command: Sequence[str],
    listeners: Sequence[tuple[str | None, socket.socket]],
    *,
    timeout: float,
    cancel: Cancel,
    environ: Mapping[str, str],
    cwd: str | None = None,
) -> Child:
    """Spawn ``command`` with the listeners and wait until it sends READY=1.

    The successor leads a process group of its own, which the workers it forks
    share: killing the group (a failed start here, the hammer later) ends them
    all. A terminal signals its foreground group, the shell's job that the first
    process leads: a Ctrl-C while a successor starts stops the predecessor, which
    kills the successor. Once the first process exits, the shell takes the
    terminal back, as it did before successors had groups: stop a successor with
    ``kill``. (setpgid, not setsid: the successor keeps the session and so its
    terminal for output.)

    Returns:
        The ready successor.

    Raises:
        SuccessorSpawnError: the command could not be executed.
        SuccessorExitedError: it exited first (its exit code and last stderr lines).
        SuccessorTimeoutError: ``timeout`` passed first; it was killed.
        UpgradeError: cancelled (this process is stopping); it was killed, or
            never started if the cancel came first.
    """
    with NotifyReceiver() as receiver:
        env = successor_environ(environ, receiver.address)
        # Under the guard, the listeners are still open: a close() cancels first.
        with cancel.unless_set():
            child = spawn(
                command,
                listeners=[sock for _, sock in listeners],
                names=[name for name, _ in listeners],
                env=env,
                extra_fds={STDERR_VAR: 2},
                new_process_group=True,  # its workers join it: one killpg ends them all
                capture_stderr=True,
                cwd=cwd,
            )
        log.info("successor started as pid %d: %s", child.pid, " ".join(command))
        try:
            _wait_ready(child, receiver, cancel, time.monotonic() + timeout, timeout)
        except BaseException:
            child.kill_group(signal.SIGKILL)
            child.wait(5.0)
            child.close()
            raise
    log.info(
        "successor pid %d ready after %.0f ms", child.pid, (time.monotonic() - child.started) * 1000
    )
    return child


def _wait_ready(
    child: Child, receiver: NotifyReceiver, cancel: Cancel, deadline: float, timeout: float
) -> None:
    tail = StderrTail()
    assert child.stderr_fd is not None
    with selectors.DefaultSelector() as selector:
        selector.register(receiver, selectors.EVENT_READ, "notify")
        selector.register(child, selectors.EVENT_READ, "exit")
        selector.register(child.stderr_fd, selectors.EVENT_READ, "stderr")
        selector.register(cancel, selectors.EVENT_READ, "cancel")
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SuccessorTimeoutError(
                    f"successor pid {child.pid} did not report READY=1 within {timeout:g} s; "
                    f"killed it{_last_line(tail)}",
                    pid=child.pid,
                    stderr_tail=tail.text(),
                )
            for key, _ in selector.select(remaining):
                if key.data == "stderr" and not tail.pump(child.stderr_fd):
                    selector.unregister(child.stderr_fd)
                elif key.data == "cancel":
                    raise UpgradeError(
                        f"upgrade cancelled: stopping; killed successor pid {child.pid}"
                    )
                elif key.data == "exit":
                    _raise_exited(child, tail)
                elif key.data == "notify" and _ready_message(receiver, child):
                    _forward_stderr_in_background(child, tail)
                    return


def _ready_message(receiver: NotifyReceiver, child: Child) -> bool:
    while True:
        try:
            message = receiver.receive()
        except NotifyError as exc:
            log.warning("ignored a notify datagram: %s", exc)
            continue
        if message is None:
            return False
        if not in_process_tree(message.pid, child.pid):
            log.warning("ignored a notify datagram from pid %d, not the successor's", message.pid)
            continue
        if message.status:
            log.info("successor pid %d: %s", child.pid, message.status)
        if message.ready:
            return True


def _raise_exited(child: Child, tail: StderrTail) -> None:
    status = child.wait(5.0)
    assert child.stderr_fd is not None
    tail.pump(child.stderr_fd)
    described = status.describe() if status else "exited"
    raise SuccessorExitedError(
        f"successor pid {child.pid} {described} before it was ready{_last_line(tail)}",
        pid=child.pid,
        returncode=status.returncode if status else -1,
        stderr_tail=tail.text(),
    )


def _last_line(tail: StderrTail) -> str:
    lines = tail.text().strip().splitlines()
    return f"; its last stderr line: {lines[-1].strip()!r}" if lines else ""


def _forward_stderr_in_background(child: Child, tail: StderrTail) -> None:
    """Until the successor takes over our stderr (GAPLESS_STDERR_FD), keep forwarding.

    The pipe passes to the forwarding thread, which closes it at EOF: closing it
    from here (a successor killed after all, a stop having raced its READY=1)
    would pull the fd from under the read, or hand the read a reused number.
    """
    fd, child.stderr_fd = child.stderr_fd, None
    assert fd is not None

    def pump() -> None:
        try:
            os.set_blocking(fd, True)
            while tail.pump(fd):
                pass
        except OSError as exc:  # our stderr is gone (EPIPE): nothing to forward to
            log.debug("stopped forwarding a successor's stderr: %s", exc)
        finally:
            os.close(fd)

    threading.Thread(target=pump, name="gapless-stderr", daemon=True).start()
