"""Faults of the ``gapless run`` manager itself, with a prober where a generation serves.

A storm of reload signals; SIGKILL of the manager (its generations drain, a
restarted manager serves the same address); no process (RLIMIT_NPROC, tested
with the manager run as an unprivileged user, since root ignores that limit) or
no fd (RLIMIT_NOFILE) left for a reload; a PID file that cannot be written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import select
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import get, wait_exit
from manager_harness import (
    DEMO,
    PYTHON,
    TIMEOUT,
    Manager,
    Prober,
    app,
    gapless_argv,
    running,
)

from gapless.systemd.notify_receiver import NotifyReceiver

NOBODY = 65534
NOTIFY = ("--ready", "notify")
FAULT = app("fault_server.py")

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root (setuid, mount, prlimit)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def started(manager: Manager) -> list[str]:
    return [line for line in manager.lines if "started as pid" in line]


# Reload storms --------------------------------------------------------------------


def test_100_reload_signals_at_once_start_at_most_two_generations(tmp_path: Path) -> None:
    with NotifyReceiver() as upstream:
        env = {**os.environ, "NOTIFY_SOCKET": upstream.address}
        with running(tmp_path, DEMO, env=env) as manager, Prober(manager.port) as prober:
            next_ready(upstream)
            for _ in range(100):
                os.kill(manager.process.pid, signal.SIGHUP)
            # READY=1 again only once no start is under way or queued any more.
            settled = next_ready(upstream)
            last = int(re.search(r"generation (\d+) active", settled).group(1))  # type: ignore[union-attr]
            prober.wait_answers(prober.answered + 3)
            manager.wait_line(rf"generation {last} ready after")
    assert 2 <= last <= 3, started(manager)  # generation 1, then one or two for the storm
    assert len(started(manager)) == last
    assert prober.failures == []


def next_ready(upstream: NotifyReceiver) -> str:
    """The STATUS= of the manager's next READY=1 to its own supervisor."""
    while select.select([upstream], [], [], TIMEOUT)[0]:
        note = upstream.receive()
        if note is not None and note.ready:
            return note.status or ""
    raise AssertionError(f"no READY=1 from the manager in {TIMEOUT} s")


# SIGKILL of the manager -------------------------------------------------------------


def test_after_sigkill_of_the_manager_its_generation_drains_and_a_restart_serves(
    tmp_path: Path,
) -> None:
    bind = f"web=127.0.0.1:{free_port()}"
    (tmp_path / "first").mkdir()
    with running(tmp_path / "first", DEMO, binds=(bind,)) as manager:
        generation = manager.status()["generations"][0]["pid"]
        with Prober(manager.port) as prober:
            prober.wait_answer_from(generation)
        manager.process.kill()
        manager.wait()
        # PR_SET_PDEATHSIG: the orphan got the stop signal, drained and left,
        # closing its copy of the listening socket.
        assert wait_exit(generation), "the generation outlived its manager"
    (tmp_path / "second").mkdir()
    with running(tmp_path / "second", DEMO, binds=(bind,)) as again, Prober(again.port) as prober:
        prober.wait_answers(3)
        assert again.port == manager.port
    assert prober.failures == []


# Limits during a reload -----------------------------------------------------------


# The venv's interpreter may sit where uid 65534 cannot go (/root): the system's.
SYSTEM_PYTHON = "/usr/bin/python3"
SRC = Path(__file__).parents[2] / "src"


@contextlib.contextmanager
def unprivileged_manager(*options: str) -> Iterator[Manager]:
    """``gapless run`` as uid 65534 (root ignores RLIMIT_NPROC), in a directory it owns."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"needs {SYSTEM_PYTHON} to run gapless as another user")
    with tempfile.TemporaryDirectory(prefix="gapless-nobody-") as directory:
        os.chown(directory, NOBODY, NOBODY)
        control = os.path.join(directory, "control.sock")
        argv = [SYSTEM_PYTHON, "-m", "gapless.cli", "run", "--control", control, *options]
        process = subprocess.Popen(
            [*argv, "--bind", "web=127.0.0.1:0", "--", SYSTEM_PYTHON, FAULT[1]],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=directory,
            env={**os.environ, "PYTHONPATH": str(SRC)},
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
        )
        manager = Manager(process, control)
        manager.start_reader()
        try:
            manager.wait_line(r"generation 1 ready after")
            yield manager
        finally:
            process.kill()  # its generation gets its stop signal (PR_SET_PDEATHSIG)
            process.wait(TIMEOUT)
            manager.read_to_end()


@needs_root
def test_a_reload_without_a_process_left_fails_cleanly_and_the_active_one_serves() -> None:
    with unprivileged_manager(*NOTIFY) as manager, Prober(manager.port) as prober:
        pid = manager.process.pid
        limits = max_processes(pid)
        set_nproc(pid, (1, limits[1]))
        answer = manager.call("reload")
        assert not answer["ok"]
        assert (
            "fork failed (EAGAIN: Resource temporarily unavailable); process limit reached: "
            "raise RLIMIT_NPROC" in answer["error"]
        )
        status = manager.status()
        assert [(g["generation"], g["state"]) for g in status["generations"]] == [(1, "active")]
        set_nproc(pid, limits)
        assert manager.call("reload")["ok"]  # nothing was left broken
        prober.wait_answers(prober.answered + 3)
    assert prober.failures == []


def set_nproc(pid: int, limits: tuple[int, int]) -> None:
    """prlimit as the manager's own uid: root here may lack CAP_SYS_RESOURCE."""
    code = f"import resource; resource.prlimit({pid}, resource.RLIMIT_NPROC, {limits})"
    subprocess.run([SYSTEM_PYTHON, "-c", code], check=True, user=NOBODY, group=NOBODY)


def max_processes(pid: int) -> tuple[int, int]:
    """RLIMIT_NPROC of ``pid`` as /proc shows it to anyone."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max processes"):
            soft, hard = (
                resource.RLIM_INFINITY if value == "unlimited" else int(value)
                for value in line.split()[2:4]
            )
            return soft, hard
    raise AssertionError(f"no Max processes in /proc/{pid}/limits")


def limit_leaving_one_fd(pid: int) -> int:
    """The RLIMIT_NOFILE under which ``pid`` can open exactly one more fd."""
    used = {int(name) for name in os.listdir(f"/proc/{pid}/fd")}
    limit = 1
    while limit - len([fd for fd in used if fd < limit]) != 1:
        limit += 1
    return limit


def test_a_reload_without_fds_left_fails_cleanly_and_the_active_one_serves(
    tmp_path: Path,
) -> None:
    with running(tmp_path, FAULT, *NOTIFY) as manager, Prober(manager.port) as prober:
        pid = manager.process.pid
        limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit_leaving_one_fd(pid), limits[1]))
        answer = manager.call("reload")  # its connection takes the last fd
        manager.signal(signal.SIGHUP)
        manager.wait_line(r"reload failed: generation 3 could not start: .*EMFILE")
        with socket.socket(socket.AF_UNIX) as hog:  # the last fd, so that accept fails
            hog.connect(manager.control)
            refused = manager.status()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        status = manager.status()
        assert manager.call("reload")["ok"]
        prober.wait_answers(prober.answered + 3)
    assert not answer["ok"]
    assert (
        "cannot open a pipe (EMFILE: Too many open files); out of file descriptors: raise "
        "RLIMIT_NOFILE" in answer["error"]
    )
    assert refused["error"].startswith("the manager is out of file descriptors; raise its")
    assert [(g["generation"], g["state"]) for g in status["generations"]] == [(1, "active")]
    assert prober.failures == []


# The PID file -----------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(options: str) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="gapless-tmpfs-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True
    )
    if mounted.returncode != 0:
        directory.rmdir()
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)
        directory.rmdir()


def fill(directory: Path) -> None:
    with open(directory / "filler", "wb", buffering=0) as file, contextlib.suppress(OSError):
        while True:
            file.write(b"\0" * 4096)
    with pytest.raises(OSError) as full:
        (directory / "probe").write_bytes(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC


def run_with_pid_file(tmp_path: Path, pid_file: Path) -> subprocess.CompletedProcess[str]:
    control = str(tmp_path / "c.sock")
    argv = gapless_argv("run", "--control", control, "--pid-file", str(pid_file))
    return subprocess.run(
        [*argv, "--bind", "127.0.0.1:0", "--", PYTHON, "-c", "raise SystemExit(9)"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def assert_pid_file_error(
    result: subprocess.CompletedProcess[str], pid_file: Path, why: str
) -> None:
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last == f"gapless: error: cannot write PID file {str(pid_file)!r}: {why}"
    assert "started as pid" not in result.stderr  # nothing was started


def test_a_pid_file_in_a_missing_directory_is_a_one_line_error(tmp_path: Path) -> None:
    pid_file = tmp_path / "missing" / "gapless.pid"
    result = run_with_pid_file(tmp_path, pid_file)
    where = str(pid_file.parent)
    assert_pid_file_error(
        result, pid_file, f"directory {where!r} does not exist; create it or choose another path"
    )


@needs_root
def test_a_pid_file_on_a_read_only_filesystem_is_a_one_line_error(tmp_path: Path) -> None:
    with tmpfs("ro") as directory:
        pid_file = directory / "gapless.pid"
        result = run_with_pid_file(tmp_path, pid_file)
    why = f"{str(directory)!r} is on a read-only filesystem; choose a writable path"
    assert_pid_file_error(result, pid_file, why)


@needs_root
def test_a_pid_file_on_a_full_disk_is_a_one_line_error(tmp_path: Path) -> None:
    with tmpfs("size=64k") as directory:
        fill(directory)
        pid_file = directory / "gapless.pid"
        result = run_with_pid_file(tmp_path, pid_file)
    why = f"no space left on the filesystem of {str(directory)!r}; free some space"
    assert_pid_file_error(result, pid_file, why)


@needs_root
def test_an_upgrade_in_place_with_the_pid_file_disk_full_keeps_serving(tmp_path: Path) -> None:
    """Found by the fault campaign: the resumed manager rewrote its PID file, failed
    on the full disk and exited 1, taking its generations with it."""
    with tmpfs("size=64k") as directory:
        pid_file = directory / "gapless.pid"
        with running(tmp_path, DEMO, "--pid-file", str(pid_file)) as manager:
            generation = manager.status()["generations"][0]["pid"]
            fill(directory)
            assert manager.call("upgrade")["ok"]
            manager.wait_line(rf"resumed in place as pid {manager.process.pid}")
            status = manager.status()
            assert status["generations"][0]["pid"] == generation
            assert pid_file.read_text() == f"{manager.process.pid}\n"
            assert get(manager.port).status == 200
            manager.call("stop")
            assert manager.wait() == 0
