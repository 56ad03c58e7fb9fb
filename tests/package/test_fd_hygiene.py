"""No fd leaks into children beyond the named sockets; LISTEN_* not past the child.

A generation of ``gapless run`` starts with fds 0-2 and its listeners at 3, 4,
..., nothing else (its NOTIFY_SOCKET is an abstract address, not an fd); a
library-mode successor shares nothing with its predecessor but the listeners and
the standard streams; a grandchild of either sees neither the sockets nor the
``LISTEN_*`` variables once its parent took them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path

from harness import start
from manager_harness import app, running

BINDS = ("web=127.0.0.1:0", "admin=127.0.0.1:0")


def fd_targets(pid: int) -> dict[int, str]:
    """What each open fd of ``pid`` is, as /proc shows it (``socket:[123]``...)."""
    directory = f"/proc/{pid}/fd"
    targets = {}
    for fd in os.listdir(directory):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            targets[int(fd)] = os.readlink(f"{directory}/{fd}")
    return targets


def fds_if_alive(pid: int) -> dict[int, str]:
    try:
        return fd_targets(pid)
    except OSError:
        return {}


def test_a_generation_starts_with_only_stdio_and_its_listeners(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    with running(tmp_path, app("fault_fds_at_start.py", str(report)), binds=BINDS) as manager:
        started = {int(fd): target for fd, target in json.loads(report.read_text())["fds"].items()}
        managers = fd_targets(manager.process.pid)
    assert sorted(started) == [0, 1, 2, 3, 4]
    assert started[2].startswith("pipe:")  # to the manager, which forwards it
    assert started[3].startswith("socket:") and started[4].startswith("socket:")
    shared = {fd for fd in (3, 4) if started[fd] in managers.values()}
    assert shared == {3, 4}  # the very listening sockets the manager holds


def test_a_generations_child_sees_neither_the_sockets_nor_listen_variables(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report.json"
    with running(tmp_path, app("fault_grandchild_env.py", str(report)), binds=BINDS):
        got = json.loads(report.read_text())
    assert got["child"]["sockets"] == [3, 4]  # taken, and still open in the child
    grandchild = got["grandchild"]
    assert grandchild["env"] == {}
    assert not [target for target in grandchild["fds"].values() if target.startswith("socket:")]


def test_a_library_mode_successor_shares_only_the_listeners_and_stdio() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = start([sys.executable, "-m", "gapless.demo", "--bind", f"127.0.0.1:{port}"])
    try:
        old = server.main_pid
        baseline = fd_targets(old)
        new = server.upgrade()
        after = fd_targets(new)
        # The old one closes its listener and leaves at once: what it still holds now
        # (the pipes it made for the upgrade), and what it held before.
        held = {*baseline.values(), *fds_if_alive(old).values()}
        # Pipes, sockets and files have inodes of their own; every epoll fd, eventfd
        # or pidfd reads "anon_inode:[...]" alike, so those cannot be told apart.
        shared = {
            fd: target
            for fd, target in after.items()
            if target in held and not target.startswith("anon_inode:")
        }
        # Until it took over its own stderr, it also holds the old one's stderr as the
        # named fd GAPLESS_STDERR_FD.
        stdio = {baseline[fd] for fd in (0, 1, 2) if fd in baseline}
        beyond = {fd for fd, target in shared.items() if fd > 2 and target not in stdio}
        assert beyond == {3}, f"shared beyond stdio and the listener: {shared}"
        assert shared[3].startswith("socket:") and shared[3] in baseline.values()
    finally:
        server.stop()
