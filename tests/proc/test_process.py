"""gapless.proc.spawn with real children: fds, LISTEN_* env, signals, groups, reaping."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lines import read_line

from gapless.errors import InheritanceError, SuccessorSpawnError
from gapless.proc.spawn import Child, ExitStatus, StderrTail, spawn

TIMEOUT = 10.0

# The child reports through a JSON file named by argv[1]; it runs after this prelude.
PRELUDE = """
import json, os, socket, sys
def report(**values):
    with open(sys.argv[1], "w") as f:
        json.dump(values, f)
def open_fds():
    fds = []
    for name in os.listdir("/proc/self/fd"):  # includes listdir's own, closed by now
        try:
            os.fstat(int(name))
        except OSError:
            continue
        fds.append(int(name))
    return sorted(fds)
def sockname(fd):
    s = socket.socket(fileno=fd)
    try:
        return s.getsockname()
    finally:
        s.detach()
"""

Spawner = Callable[..., Child]


@pytest.fixture
def spawn_child() -> Iterator[Spawner]:
    """spawn(), with every child killed, reaped and closed at the end of the test."""
    children: list[Child] = []

    def start(argv: list[str], **kwargs: Any) -> Child:
        child = spawn(argv, **kwargs)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill_group(signal.SIGKILL)
            child.wait(TIMEOUT)
        child.close()


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", PRELUDE + script, *args]


def run_reporting(spawner: Spawner, tmp_path: Path, script: str, **kwargs: Any) -> Any:
    out = tmp_path / "report.json"
    child = spawner(python(script, str(out)), **kwargs)
    status = child.wait(TIMEOUT)
    assert status == ExitStatus(0), status
    return json.loads(out.read_text())


def tcp_listener() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[list[socket.socket]]:
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "s.sock"))
    unix.listen()
    socks = [tcp_listener(), unix, tcp_listener()]
    yield socks
    for s in socks:
        s.close()


def test_listen_pid_is_the_execd_childs_own_pid(
    spawn_child: Spawner, tmp_path: Path, listeners: list[socket.socket]
) -> None:
    script = "report(pid=os.getpid(), env={k: os.environ.get(k) for k in sys.argv[2:]})"
    out = tmp_path / "report.json"
    argv = python(script, str(out), "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
    child = spawn_child(argv, listeners=listeners[:2], names=["web", None])
    assert child.wait(TIMEOUT) == ExitStatus(0)
    got = json.loads(out.read_text())
    assert got["pid"] == child.pid
    assert got["env"] == {
        "LISTEN_PID": str(child.pid),
        "LISTEN_FDS": "2",
        "LISTEN_FDNAMES": "web:unknown",
    }


def test_listeners_arrive_on_fd_3_up_in_order_and_are_the_same_sockets(
    spawn_child: Spawner, tmp_path: Path, listeners: list[socket.socket]
) -> None:
    client = socket.create_connection(listeners[0].getsockname(), timeout=TIMEOUT)
    script = """
names = [sockname(fd) for fd in (3, 4, 5)]
conn, _ = socket.socket(fileno=3).accept()
conn.sendall(b"!")
report(names=names, fds=open_fds())
"""
    got = run_reporting(spawn_child, tmp_path, script, listeners=listeners)
    expected = [s.getsockname() for s in listeners]
    assert got["names"] == [list(n) if isinstance(n, tuple) else n for n in expected]
    assert client.recv(1) == b"!"
    client.close()


def test_a_source_fd_inside_the_target_range_is_not_clobbered(
    spawn_child: Spawner, tmp_path: Path
) -> None:
    first = tcp_listener()
    low = first.fileno()
    # The other listeners' targets cover `low`, and `first` itself goes after them: a
    # naive dup2 in order would overwrite it before copying it.
    others = [tcp_listener() for _ in range(max(1, low - 2))]
    socks = [*others, first]
    assert low in range(3, 3 + len(socks)) and socks.index(first) != low - 3
    script = "report(names=[sockname(fd) for fd in range(3, 3 + int(os.environ['LISTEN_FDS']))])"
    try:
        got = run_reporting(spawn_child, tmp_path, script, listeners=socks)
        assert got["names"] == [list(s.getsockname()) for s in socks]
    finally:
        for s in socks:
            s.close()


def test_child_holds_only_stdio_listeners_and_extra_fds(
    spawn_child: Spawner, tmp_path: Path, listeners: list[socket.socket]
) -> None:
    leak_r, leak_w = os.pipe()
    extra_r, extra_w = os.pipe()
    os.set_inheritable(leak_r, True)  # a careless fd that fork would otherwise hand over
    try:
        got = run_reporting(
            spawn_child,
            tmp_path,
            "report(fds=open_fds())",
            listeners=listeners[:2],
            extra_fds={"EXTRA_FD": extra_w},
        )
    finally:
        for fd in (leak_r, leak_w, extra_r, extra_w):
            os.close(fd)
    assert set(got["fds"]) - {0, 1, 2} == {3, 4, 5}


def test_extra_fds_follow_the_listeners_and_name_their_number(
    spawn_child: Spawner, tmp_path: Path, listeners: list[socket.socket]
) -> None:
    r, w = os.pipe()
    script = "fd = int(os.environ['REPORT_FD']); os.write(fd, b'%d\\n' % fd)"
    child = spawn_child(
        python(script, "unused"), listeners=listeners[:2], extra_fds={"REPORT_FD": w}
    )
    os.close(w)
    try:
        assert read_line(r, TIMEOUT) == b"5\n"
    finally:
        os.close(r)
    assert child.wait(TIMEOUT) == ExitStatus(0)


def test_parent_listen_vars_do_not_reach_a_child_without_listeners(
    spawn_child: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, value in (("LISTEN_PID", "1"), ("LISTEN_FDS", "3"), ("LISTEN_FDNAMES", "a:b:c")):
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("GAPLESS_KEPT", "yes")
    script = "report(env={k: v for k, v in os.environ.items() if k.startswith(('LISTEN_', 'GAP'))})"
    got = run_reporting(spawn_child, tmp_path, script)
    assert got["env"] == {"GAPLESS_KEPT": "yes"}
    explicit = {"LISTEN_FDS": "9", "PATH": os.defpath}
    got = run_reporting(spawn_child, tmp_path, script, env=explicit)
    assert got["env"] == {}


def test_child_has_default_sigpipe_and_an_empty_signal_mask(
    spawn_child: Spawner, tmp_path: Path
) -> None:
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # what the child must not get
    # Not a Python child: Python would ignore SIGPIPE again at its own startup.
    out = tmp_path / "status"
    script = 'exec grep -E "^Sig(Ign|Blk):" /proc/self/status > "$1"'
    mask_before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    child = spawn_child(["/bin/sh", "-c", script, "sh", str(out)])
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask_before
    assert child.wait(TIMEOUT) == ExitStatus(0)
    got = {k: int(v, 16) for k, v in (line.split(":") for line in out.read_text().splitlines())}
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not got["SigIgn"] & (1 << (sig - 1)), sig
    assert got["SigBlk"] == 0


def test_new_process_group_kill_group_kills_a_grandchild(spawn_child: Spawner) -> None:
    r, w = os.pipe()
    script = """
import subprocess
grandchild = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
os.write(int(os.environ["PID_FD"]), b"%d\\n" % grandchild.pid)
grandchild.wait()
"""
    child = spawn_child(python(script), new_process_group=True, extra_fds={"PID_FD": w})
    os.close(w)
    try:
        grandchild = int(read_line(r, TIMEOUT))
    finally:
        os.close(r)
    assert os.getpgid(child.pid) == child.pid
    assert os.getpgid(grandchild) == child.pid
    grandchild_fd = os.pidfd_open(grandchild)
    try:
        child.kill_group(signal.SIGKILL)
        assert child.wait(TIMEOUT) == ExitStatus(-signal.SIGKILL)
        assert select.select([grandchild_fd], [], [], TIMEOUT)[0], "grandchild survived"
    finally:
        os.close(grandchild_fd)
    child.kill_group(signal.SIGKILL)  # the group is gone: no error


def test_capture_stderr_keeps_the_last_lines_and_forwards_all(spawn_child: Spawner) -> None:
    script = "for i in range(30): print(f'line {i}', file=sys.stderr)\nsys.exit(3)"
    child = spawn_child(python(script), capture_stderr=True)
    assert child.stderr_fd is not None
    assert not os.get_blocking(child.stderr_fd)
    forwarded_r, forwarded_w = os.pipe()
    tail = StderrTail()
    deadline = time.monotonic() + TIMEOUT
    try:
        while True:
            remaining = deadline - time.monotonic()
            assert select.select([child.stderr_fd], [], [], max(0.0, remaining))[0], "no EOF"
            if not tail.pump(child.stderr_fd, forward_to=forwarded_w):
                break
        forwarded = os.read(forwarded_r, 65536).decode()
    finally:
        os.close(forwarded_r)
        os.close(forwarded_w)
    assert child.wait(TIMEOUT) == ExitStatus(3)
    assert tail.text() == "".join(f"line {i}\n" for i in range(10, 30))
    assert forwarded == "".join(f"line {i}\n" for i in range(30))


def test_stderr_tail_bounds_lines_and_bytes_and_replaces_bad_utf8() -> None:
    tail = StderrTail(lines=2)
    for chunk in (b"one\ntw", b"o\nthr", b"ee\nfo"):
        tail.feed(chunk)
    assert tail.text() == "three\nfo"
    tail.feed(b"ur\n")
    assert tail.text() == "three\nfour\n"
    small = StderrTail(lines=100, max_bytes=4)
    small.feed(b"abcdef\xff")
    assert small.text() == "def\ufffd"


def test_missing_command_raises_with_the_path_and_leaks_nothing(tmp_path: Path) -> None:
    fds_before = sorted(os.listdir("/proc/self/fd"))
    zombies_before = zombie_children()
    missing = str(tmp_path / "no-such-program")
    with pytest.raises(SuccessorSpawnError, match="command not found") as info:
        spawn([missing, "arg"], capture_stderr=True)
    assert missing in str(info.value)
    with pytest.raises(SuccessorSpawnError, match=r"'gapless-no-such-cmd'.*check the path or PATH"):
        spawn(["gapless-no-such-cmd"], env={"PATH": str(tmp_path)})
    assert sorted(os.listdir("/proc/self/fd")) == fds_before
    assert zombie_children() == zombies_before, "the failed children were reaped"


def zombie_children() -> set[int]:
    zombies = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, NotADirectoryError, ProcessLookupError, IndexError):
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.add(int(entry))
    return zombies


def test_non_executable_file_raises_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "server.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    with pytest.raises(SuccessorSpawnError, match=r"not executable \(EACCES\)") as info:
        spawn([str(script)])
    assert str(script) in str(info.value)


def test_bad_arguments_raise_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(SuccessorSpawnError, match="empty command"):
        spawn([])
    with pytest.raises(InheritanceError, match="2 names for 1 listeners"), tcp_listener() as s:
        spawn(["true"], listeners=[s], names=["a", "b"])
    with pytest.raises(SuccessorSpawnError, match="not an open fd"):
        spawn(["true"], extra_fds={"X_FD": 10**6})
    with pytest.raises(SuccessorSpawnError, match="cannot enter directory"):
        spawn([sys.executable, "-c", "pass"], cwd=str(tmp_path / "missing"))


def test_command_is_found_on_path_and_runs_in_cwd(spawn_child: Spawner, tmp_path: Path) -> None:
    program = tmp_path / "bin" / "gapless-test-prog"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\npwd > where\n")
    program.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    child = spawn_child(["gapless-test-prog"], env={"PATH": str(program.parent)}, cwd=str(work))
    assert child.wait(TIMEOUT) == ExitStatus(0)
    assert (work / "where").read_text().strip() == str(work)


def test_exit_status_describe() -> None:
    assert ExitStatus(3).describe() == "exited with code 3"
    assert ExitStatus(0).describe() == "exited with code 0"
    assert ExitStatus(-9).describe() == "killed by signal 9 (SIGKILL)"


def test_wait_times_out_while_running_then_reaps_once(spawn_child: Spawner) -> None:
    r, w = os.pipe()
    child = spawn_child(python("os.read(int(os.environ['HOLD_FD']), 1)"), extra_fds={"HOLD_FD": r})
    os.close(r)
    assert child.wait(timeout=0.05) is None
    assert child.poll() is None
    os.close(w)  # EOF lets the child finish
    assert child.wait(TIMEOUT) == ExitStatus(0)
    assert child.poll() == ExitStatus(0)
    child.send_signal(signal.SIGKILL)  # reaped: never signals the pid again


def test_send_signal_and_pidfd_readable_on_exit(spawn_child: Spawner) -> None:
    child = spawn_child(python("import signal; signal.pause()"))
    assert not select.select([child], [], [], 0)[0]
    child.send_signal(signal.SIGTERM)
    assert select.select([child], [], [], TIMEOUT)[0]
    status = child.wait(TIMEOUT)
    assert status == ExitStatus(-signal.SIGTERM)
    assert status.describe() == "killed by signal 15 (SIGTERM)"


def test_spawn_from_a_thread(spawn_child: Spawner) -> None:
    result: list[Child] = []
    thread = threading.Thread(target=lambda: result.append(spawn_child(python("pass"))))
    thread.start()
    thread.join(TIMEOUT)
    assert result and result[0].wait(TIMEOUT) == ExitStatus(0)
