"""PID files written atomically and removed only by their owner.

A PID file names the process to signal for a reload (``kill -HUP $(cat app.pid)``).
Two rules make it trustworthy across reloads:

* Never seen half written: the pid goes to a new temporary file in the same
  directory, which is fsynced and renamed over the old file (a rename within one
  filesystem is atomic), then the directory is fsynced so the rename survives a
  crash. A reader sees the old pid or the new one, nothing in between.
* Removed only by the process it names: after a supervisor restart the
  successor has already written its own pid, and the old process's cleanup must
  not delete the successor's file.

Example::

    >>> write_pid_file("/run/app.pid")
    >>> read_pid_file("/run/app.pid") == os.getpid()
    True
    >>> remove_pid_file("/run/app.pid")
    True
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets

from ..errors import PidFileError

__all__ = ["read_pid_file", "remove_pid_file", "write_pid_file"]

# pid_max is at most 2**22 (7 digits); a longer file is not a PID file of ours.
_MAX_BYTES = 64
_PID = re.compile(rb"[0-9]+")


def write_pid_file(path: str | os.PathLike[str], pid: int | None = None) -> None:
    """Atomically replace ``path`` with a file holding ``"<pid>\\n"``.

    Args:
        path: the PID file; its directory must exist.
        pid: the pid to write, by default this process's.

    Raises:
        PidFileError: naming the path and the reason (missing directory,
            read-only filesystem, no space, permission denied); no temporary
            file is left behind.
    """
    target = os.fspath(path)
    pid = os.getpid() if pid is None else pid
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise PidFileError(f"invalid pid {pid!r} for PID file {target!r}: give a positive pid")
    directory = os.path.dirname(os.path.abspath(target))
    # Truncated so that the temporary name stays under NAME_MAX (255 bytes).
    base = os.path.basename(target)[:200]
    temporary = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
    try:
        _write_new_file(temporary, f"{pid}\n".encode())
        os.replace(temporary, target)
        _fsync_directory(directory)
    except OSError as exc:
        _unlink_if_present(temporary)
        raise PidFileError(_write_failure(target, directory, exc)) from exc


def read_pid_file(path: str | os.PathLike[str]) -> int | None:
    """Read the pid a PID file holds.

    Args:
        path: the PID file.

    Returns:
        The pid, or None if the file does not exist.

    Raises:
        PidFileError: the file cannot be read or does not hold a pid.
    """
    target = os.fspath(path)
    data = _read_if_present(target)
    if data is None:
        return None
    pid = _parse_pid(data)
    if pid is None:
        shown = data[:20].decode("ascii", "replace")
        raise PidFileError(
            f"PID file {target!r} holds {shown!r}, not a pid; remove it if no server is running"
        )
    return pid


def remove_pid_file(path: str | os.PathLike[str], pid: int | None = None) -> bool:
    """Remove a PID file if, and only if, it names ``pid``.

    The check and the unlink are two steps (Linux has no unlink-if-unchanged):
    a successor that replaces the file in the microseconds between them loses
    its file. Its pid is then still known to the manager that started it.

    Args:
        path: the PID file.
        pid: the owner to check for, by default this process.

    Returns:
        True if the file was removed; False if it is missing, names another
        process (a successor already wrote its own pid) or holds no pid.

    Raises:
        PidFileError: the file exists but cannot be read or removed.
    """
    target = os.fspath(path)
    owner = os.getpid() if pid is None else pid
    data = _read_if_present(target)
    if data is None or _parse_pid(data) != owner:
        return False
    try:
        os.unlink(target)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise PidFileError(
            f"cannot remove PID file {target!r}: {exc.strerror or exc}; remove it by hand"
        ) from exc
    return True


def _write_new_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems cannot fsync a directory; the rename is done anyway.
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def _unlink_if_present(path: str) -> None:
    # Absent if it was never created or was already renamed into place.
    with contextlib.suppress(OSError):
        os.unlink(path)


def _write_failure(target: str, directory: str, exc: OSError) -> str:
    start = f"cannot write PID file {target!r}"
    if exc.errno == errno.ENOENT:
        return f"{start}: directory {directory!r} does not exist; create it or choose another path"
    if exc.errno == errno.ENOTDIR:
        return f"{start}: {directory!r} is not a directory; choose another path"
    if exc.errno == errno.EROFS:
        return f"{start}: {directory!r} is on a read-only filesystem; choose a writable path"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{start}: no space left on the filesystem of {directory!r}; free some space"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{start}: permission denied in {directory!r}; run as a user who may write there"
    if exc.errno == errno.EISDIR:
        return f"{start}: it is a directory; give the path of a file"
    return f"{start}: {exc.strerror or exc}; check the path"


def _read_if_present(target: str) -> bytes | None:
    try:
        with open(target, "rb") as file:
            return file.read(_MAX_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise PidFileError(
            f"cannot read PID file {target!r}: {exc.strerror or exc}; check its permissions"
        ) from exc


def _parse_pid(data: bytes) -> int | None:
    text = data.strip()
    if len(data) > _MAX_BYTES or not _PID.fullmatch(text) or int(text) == 0:
        return None
    return int(text)
