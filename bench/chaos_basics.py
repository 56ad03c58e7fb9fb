"""What every part of bench/chaos.py shares: the fault record, the errors a fault
raises, the control client it speaks, and waits on processes (pidfds, /proc).

Every wait here is on an event (an answer, an exit) and has a timeout that
raises or reports: nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gapless.bench.processes import still_running
from gapless.proc.procfs import all_stats

TIMEOUT = 15.0
PYTHON = sys.executable


class FaultProblem(Exception):
    """A fault met an outcome the goals rule out (no answer, a wrong answer, a hang)."""


class ManagerGone(FaultProblem):
    """The manager exited or stopped answering when it was not asked to."""


@dataclass
class FaultRecord:
    """One injected fault; times are ``time.monotonic()`` values."""

    index: int
    kind: str
    begin: float
    end: float = 0.0
    inject_at: float | None = None
    # Meant to kill or stop what served: a request in flight then may die with it.
    kills: list[float] = field(default_factory=list)
    # From an intended stop until the next manager was ready: nothing meant to serve.
    outages: list[tuple[float, float]] = field(default_factory=list)
    # An intended stop whose outage no manager's readiness has ended yet: if the
    # restart fails, the recovery's new manager ends it (the requests in between
    # still met no manager meant to serve, and the failed restart is a problem).
    down_since: float | None = None
    manager_before: int = 0
    manager_after: int = 0
    image_changed: bool = False  # an upgrade in place or a new manager: fds/RSS start anew
    fds_before: int = 0
    fds_after: int = 0
    rss_before: int = 0
    rss_after: int = 0
    zombies_after: int = 0
    manager_died: str | None = None  # it exited or hung when not asked to
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wrk: dict[str, Any] | None = None
    left_behind: list[str] = field(default_factory=list)

    def back_up(self, ready: float) -> None:
        """A manager was ready at ``ready``: the outage of an intended stop, if one is
        open, ends there."""
        if self.down_since is not None:
            self.outages.append((self.down_since, ready))
            self.down_since = None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ask(path: str, cmd: str, timeout: float, **fields: Any) -> dict[str, Any]:
    """One control command over the public protocol; its final answer.

    Not gapless.run.control.call: with a timeout its connect fails at once with
    EAGAIN while the socket's backlog is full (after 1,000 connections at once),
    where this one waits up to the timeout for room (SO_SNDTIMEO).

    Raises:
        ManagerGone: no answer (refused, reset, closed, timed out).
    """
    request = json.dumps({"v": 1, "cmd": cmd, **fields}).encode() + b"\n"
    try:
        with connect_unix(path, timeout) as sock:
            # A client refused at once (no fd left for it) is answered, then dropped.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(request)
            for line in sock.makefile("rb"):
                answer: dict[str, Any] = json.loads(line)
                if "progress" not in answer:
                    _wait_closed(sock)
                    return answer
        problem = "closed the connection"
    except (OSError, ValueError) as exc:
        problem = str(exc)
    raise ManagerGone(f"{cmd}: {problem}")


def _wait_closed(sock: socket.socket) -> None:
    """Hang up and read until the manager has closed its end: its fd count sampled
    next (fds flat per fault) must not still hold this connection, which on a busy
    machine it may for a while after the answer."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass


def connect_unix(path: str, timeout: float, rcvbuf: int | None = None) -> socket.socket:
    """A blocking connection to a unix stream socket: connect waits up to ``timeout``
    for room in a full backlog (SO_SNDTIMEO), then every read and write too."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        whole, part = divmod(timeout, 1.0)
        timeval = struct.pack("ll", int(whole), int(part * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        sock.connect(path)
        sock.settimeout(timeout)
    except OSError:
        sock.close()
        raise
    return sock


def reap_adopted(leaders: set[int]) -> None:
    """The campaign is a child subreaper: reap the generations' processes it adopted
    when their manager died (and only those: subprocess reaps its own)."""
    me = b"%d" % os.getpid()
    for pid, fields in all_stats():
        if fields[0] == b"Z" and fields[1] == me and int(fields[2]) in leaders:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def our_processes(groups: set[int]) -> list[int]:
    """Live descendants of the campaign in one of ``groups``: the generations' processes
    (a dead manager's come to the campaign, a child subreaper). Other processes in a
    group of the same number are not ours: pids are reused in a long campaign."""
    stats = {pid: fields for pid, fields in all_stats()}
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    found, todo = [], list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        if stats[pid][0] != b"Z" and int(stats[pid][2]) in groups:
            found.append(pid)
    return sorted(found)


def kill_groups(pids: list[int]) -> None:
    """SIGKILL each pid and its group, and return once they have exited: a killed
    process still holds the listening port until its exit, and the next manager's
    bind would fail on it (the more likely, the busier the machine)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    still_running(pids, TIMEOUT)  # one that outlives SIGKILL shows as left behind next


def port_holders(port: int) -> set[int]:
    """Processes holding a socket that listens on ``port`` (from /proc/net/tcp): a
    foreign one too, which then blocks the next manager's bind."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    holders = set()
    for name in os.listdir("/proc") if inodes else ():
        if name.isdigit() and name != str(os.getpid()):
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{name}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{name}/fd/{fd}") in inodes:
                            holders.add(int(name))
    return holders


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "(gone)"


def final_answers(socks: list[socket.socket], timeout: float) -> list[dict[str, Any] | None]:
    """Read each socket's lines until its final (non-progress) answer or EOF; None for
    a socket that got none within ``timeout``."""
    answers: list[dict[str, Any] | None] = [None] * len(socks)
    buffers = [b""] * len(socks)
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for index, sock in enumerate(socks):
            selector.register(sock, selectors.EVENT_READ, index)
        while selector.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                index, sock = key.data, socks[key.data]
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                buffers[index] += data
                *lines, buffers[index] = buffers[index].split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    if "progress" not in message and answers[index] is None:
                        answers[index] = message
                if not data or answers[index] is not None:
                    selector.unregister(sock)
    return answers
