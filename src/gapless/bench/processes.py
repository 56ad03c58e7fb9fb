"""What the strategies wait on: processes exiting (pidfds), lines a server prints,
and a server answering from a process it did not answer from before.

Every wait here blocks on an event (a pidfd, a pipe, a socket) with a deadline that
fails loudly with :class:`~gapless.errors.BenchError`; none sleeps.

Example::

    pump = OutputPump(child.stderr_fd)
    pump.wait_for(LISTENING, timeout=30)
    pid = wait_new_pid(address, old={first_pid}, timeout=30)
    wait_exited([first_pid], timeout=30)
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import re
import select
import signal
import threading
import time
from collections.abc import Collection, Iterable

from ..errors import BenchError
from ..proc.procfs import all_stats
from ..sockets.addresses import TcpAddress

__all__ = [
    "LISTENING",
    "OutputPump",
    "ProcessTree",
    "answering_pid",
    "children",
    "descendants",
    "parent",
    "still_running",
    "stop_tree",
    "wait_exited",
    "wait_new_pid",
    "workers",
]

#: What servers print once their socket is bound: the demo, gunicorn, uvicorn, granian.
LISTENING = re.compile(r"listening on|Listening at|Uvicorn running on|Serving http", re.I)
_PID_IN_BODY = re.compile(rb"pid (\d+)")


class OutputPump:
    """Reads a server's output pipe in a thread (so the server never blocks on a full
    pipe), keeps the last lines for error messages and lets callers wait for a line.

    Args:
        fd: the read end of the pipe; the pump owns and closes it.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, True)  # a thread of its own waits on it
        self._file = os.fdopen(fd, "rb", buffering=0)
        self._lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=200)
        self._seen = 0
        self._eof = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, daemon=True, name="output-pump")
        self._thread.start()

    def _pump(self) -> None:
        with self._file:
            for raw in iter(self._file.readline, b""):
                with self._changed:
                    self._lines.append((self._seen, raw.decode(errors="replace").rstrip()))
                    self._seen += 1
                    self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float, after: int = 0) -> str:
        """Wait for a line matching ``pattern``, numbered ``after`` or later.

        Raises:
            BenchError: no such line within ``timeout`` seconds, or the pipe closed.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for number, line in self._lines:
                    if number >= after and pattern.search(line):
                        return line
                after = self._seen
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    why = "its output ended" if self._eof else f"{timeout:g} s passed"
                    raise BenchError(
                        f"the server printed no line like {pattern.pattern!r} ({why});"
                        f" its last lines: {self.tail()}"
                    )
                self._changed.wait(remaining)

    @property
    def seen(self) -> int:
        """How many lines were read so far (for :meth:`wait_for`'s ``after``)."""
        with self._changed:
            return self._seen

    def tail(self, count: int = 5) -> list[str]:
        """The last ``count`` lines."""
        with self._changed:
            return [line for _, line in self._lines][-count:]

    def close(self, timeout: float = 5.0) -> None:
        """Wait for the pipe's end, which comes once every writer exited."""
        self._thread.join(timeout)


def wait_exited(pids: Iterable[int], timeout: float, what: str = "the old generation") -> float:
    """Wait until every pid has exited, through pidfds; return the time of the last exit.

    A pid already gone counts as exited. Children of ours are not reaped here.

    Raises:
        BenchError: some still run after ``timeout`` seconds.
    """
    left = still_running(pids, timeout)
    if left:
        running = ", ".join(str(pid) for pid in left)
        raise BenchError(
            f"{what} (pids {running}) still runs {timeout:g} s after it was told to go"
        )
    return time.monotonic()


def still_running(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds until every pid has exited, through pidfds;
    return those still running then (a pid already gone counts as exited)."""
    fds: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fds[os.pidfd_open(pid)] = pid
    deadline = time.monotonic() + timeout
    try:
        while fds and (remaining := deadline - time.monotonic()) > 0:
            for fd in select.select(list(fds), [], [], remaining)[0]:
                del fds[fd]
                os.close(fd)
        return sorted(fds.values())
    finally:
        for fd in fds:
            os.close(fd)


class ProcessTree:
    """Pidfds on a process and its descendants as they are now, to kill what is left
    of them later without hitting a process that reused one of their pids. Servers
    may put workers in process groups of their own (gapless run does), so killing the
    first process group is not enough."""

    def __init__(self, pid: int) -> None:
        self.fds: list[int] = []
        for member in (pid, *descendants(pid)):
            with contextlib.suppress(ProcessLookupError):
                self.fds.append(os.pidfd_open(member))

    def kill(self) -> None:
        """SIGKILL every member still running, then close the pidfds."""
        for fd in self.fds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.close(fd)
        self.fds = []


def stop_tree(pid: int, timeout: float) -> None:
    """SIGTERM ``pid``, wait for it to exit, then SIGKILL anything left of its tree.

    Raises:
        BenchError: it did not exit within ``timeout`` (its tree is killed all the same).
    """
    tree = ProcessTree(pid)
    try:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        wait_exited([pid], timeout, "the server, told to stop,")
    finally:
        tree.kill()


def children(pid: int) -> list[int]:
    """The live (not zombie) children of ``pid``, from every ``/proc/<n>/stat``: this
    kernel has no ``/proc/<pid>/task/<tid>/children``."""
    return sorted(child for child, parent in _parents().items() if parent == pid)


def descendants(pid: int) -> list[int]:
    """``pid``'s live descendants, parents before their children."""
    parents = _parents()
    tree = [pid]
    for ancestor in tree:  # grows while it is walked: breadth first
        tree += sorted(child for child, parent in parents.items() if parent == ancestor)
    return tree[1:]


def parent(pid: int) -> int:
    """The parent of ``pid``; 0 if it is gone."""
    return _parents().get(pid, 0)


def workers(pid: int) -> list[int]:
    """The descendants of ``pid`` that may serve: all but multiprocessing's resource
    tracker, which uvicorn's supervisor starts and which never answers a request."""
    return [child for child in descendants(pid) if b"resource_tracker" not in _cmdline(child)]


def answering_pid(address: TcpAddress, timeout: float) -> int | None:
    """One request on a fresh connection; the pid its body names, or None if it failed."""
    connection = http.client.HTTPConnection(address.host, address.port, timeout=timeout)
    try:
        connection.request("GET", "/", headers={"Connection": "close"})
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    match = _PID_IN_BODY.search(body)
    return int(match.group(1)) if response.status == 200 and match else None


def wait_new_pid(address: TcpAddress, old: Collection[int], timeout: float) -> int:
    """Request on fresh connections, one at a time, until a pid not in ``old`` answers.

    Each request blocks until the server answers or fails; this is the event "a new
    generation serves" for servers that announce nothing. It adds one request in
    flight at most to the load.

    Raises:
        BenchError: no new pid answered within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        pid = answering_pid(address, min(remaining, 10.0))
        if pid is not None and pid not in old:
            return pid
    raise BenchError(
        f"no new process answered on {address} within {timeout:g} s (old pids {sorted(old)});"
        " its responses must contain 'pid <N>', as gapless.bench.apps' do"
    )


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process; zombies are left out."""
    parents = {}
    for pid, fields in all_stats():
        if fields[0] != b"Z" and fields[1].isdigit():
            parents[pid] = int(fields[1])
    return parents


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:
        return b""
