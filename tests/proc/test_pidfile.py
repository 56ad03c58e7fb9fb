"""PID files: atomic writes, owner-only removal, and one-line errors from real failures."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gapless.errors import PidFileError
from gapless.proc.pidfile import read_pid_file, remove_pid_file, write_pid_file

TIMEOUT = 10.0


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount a fresh tmpfs with the given options; skip where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs CAP_SYS_ADMIN): {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True, timeout=TIMEOUT)


def test_write_then_read_this_process(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    write_pid_file(path)
    assert path.read_text() == f"{os.getpid()}\n"
    assert read_pid_file(path) == os.getpid()


def test_write_given_pid_with_mode_0644(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    old_umask = os.umask(0o022)
    try:
        write_pid_file(str(path), pid=4242)
    finally:
        os.umask(old_umask)
    assert read_pid_file(str(path)) == 4242
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    write_pid_file(path, pid=100)
    first_inode = path.stat().st_ino
    write_pid_file(path, pid=200)
    assert path.stat().st_ino != first_inode, "the file was rewritten in place, not replaced"
    assert path.read_text() == "200\n"
    assert os.listdir(tmp_path) == ["app.pid"]


def test_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    write_pid_file(path, pid=1)
    stop = threading.Event()
    seen: set[int | None] = set()
    failures: list[BaseException] = []

    def read_until_stopped() -> None:
        try:
            while not stop.is_set():
                seen.add(read_pid_file(path))
        except BaseException as exc:
            failures.append(exc)

    reader = threading.Thread(target=read_until_stopped)
    reader.start()
    try:
        for pid in range(2, 60):
            write_pid_file(path, pid=pid)
    finally:
        stop.set()
        reader.join(TIMEOUT)
    assert not failures, failures
    assert seen <= set(range(1, 60))
    assert os.listdir(tmp_path) == ["app.pid"]


def test_read_missing_file_is_none(tmp_path: Path) -> None:
    assert read_pid_file(tmp_path / "app.pid") is None
    assert read_pid_file(tmp_path / "no-such-dir" / "app.pid") is None


@pytest.mark.parametrize("content", ["123", "123\n", " 123 \n", "0123\n"])
def test_read_tolerates_whitespace(tmp_path: Path, content: str) -> None:
    path = tmp_path / "app.pid"
    path.write_text(content)
    assert read_pid_file(path) == 123


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"abc\n", b"12 34\n", b"-5\n", b"0\n", b"+7\n", b"1" * 100, b"\xff\xfe"],
)
def test_read_garbage_raises(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "app.pid"
    path.write_bytes(content)
    with pytest.raises(PidFileError, match="not a pid") as caught:
        read_pid_file(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_read_a_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(PidFileError, match="cannot read PID file"):
        read_pid_file(tmp_path)


def test_remove_by_owner(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    write_pid_file(path)
    assert remove_pid_file(path) is True
    assert not path.exists()


def test_remove_with_explicit_owner(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    write_pid_file(path, pid=4242)
    assert remove_pid_file(path, pid=4243) is False
    assert remove_pid_file(path, pid=4242) is True
    assert not path.exists()


def test_remove_leaves_a_successors_file(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    write_pid_file(path)
    successor = os.getpid() + 1
    write_pid_file(path, pid=successor)
    assert remove_pid_file(path) is False
    assert read_pid_file(path) == successor


def test_remove_missing_file_is_false(tmp_path: Path) -> None:
    assert remove_pid_file(tmp_path / "app.pid") is False
    assert remove_pid_file(tmp_path / "no-such-dir" / "app.pid") is False


def test_remove_leaves_garbage(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    path.write_text("not a pid\n")
    assert remove_pid_file(path) is False
    assert path.read_text() == "not a pid\n"


def test_write_into_missing_directory_raises(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "app.pid"
    with pytest.raises(PidFileError, match="does not exist") as caught:
        write_pid_file(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.__cause__ is not None
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.ENOENT


def test_write_onto_a_directory_raises_and_cleans_up(tmp_path: Path) -> None:
    (tmp_path / "app.pid").mkdir()
    with pytest.raises(PidFileError, match="is a directory"):
        write_pid_file(tmp_path / "app.pid")
    assert os.listdir(tmp_path) == ["app.pid"]


@pytest.mark.parametrize("pid", [0, -1, True])
def test_write_invalid_pid_raises(tmp_path: Path, pid: int) -> None:
    with pytest.raises(PidFileError, match="invalid pid"):
        write_pid_file(tmp_path / "app.pid", pid=pid)
    assert os.listdir(tmp_path) == []


def test_write_on_read_only_filesystem_raises(mount_tmpfs: Callable[[str], Path]) -> None:
    directory = mount_tmpfs("ro,size=64k")
    path = directory / "app.pid"
    with pytest.raises(PidFileError, match="read-only filesystem") as caught:
        write_pid_file(path)
    assert str(path) in str(caught.value)


def test_write_on_full_filesystem_raises_and_cleans_up(mount_tmpfs: Callable[[str], Path]) -> None:
    directory = mount_tmpfs("size=16k")
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError) as full:
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    assert full.value.errno == errno.ENOSPC
    path = directory / "app.pid"
    with pytest.raises(PidFileError, match="no space left") as caught:
        write_pid_file(path)
    assert str(path) in str(caught.value)
    assert os.listdir(directory) == ["filler"]
