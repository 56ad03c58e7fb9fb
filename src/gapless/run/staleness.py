"""What the fork server (:mod:`gapless.run.zygote`) holds, and whether it is still
what a cold start would load: the stale-code rule of warm starts.

Example::

    snapshot = Snapshot()          # after the server stack was imported
    why = snapshot.changed(env, cwd)  # None, or e.g. "/srv/venv/.../h11_impl.py changed on disk"
"""

from __future__ import annotations

import os
import site
import sys
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["VOLATILE_ENV", "Snapshot"]

#: Variables set per generation; the others must match the fork server's own.
VOLATILE_ENV = frozenset({"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET"})


class Snapshot:
    """What a cold start would load differently if it changed: every module file,
    the site directories, the interpreter, the environment, the directory.

    Args:
        site_dirs: where ``site`` reads ``.pth`` files at start (default: this
            interpreter's); an entry added there (a package installed) is a change.
    """

    def __init__(self, site_dirs: Sequence[str] | None = None) -> None:
        dirs = _site_dirs() if site_dirs is None else set(site_dirs)
        self.files = _stat_all(_module_files() | dirs | {os.path.realpath(sys.executable)})
        self.env = _stable(os.environ)
        self.cwd = os.getcwd()

    def changed(self, env: dict[str, str], cwd: str) -> str | None:
        """Why a generation with ``env`` in ``cwd`` must start cold, or None."""
        if cwd != self.cwd:
            return f"the directory changed ({self.cwd} -> {cwd})"
        wanted = _stable(env)
        if wanted != self.env:
            keys = wanted.keys() | self.env.keys()
            names = sorted(k for k in keys if wanted.get(k) != self.env.get(k))
            return f"the environment changed ({', '.join(names[:3])})"
        for path, before in self.files.items():
            if _stat(path) != before:
                return f"{path} changed on disk"
        tasks = len(os.listdir("/proc/self/task"))
        if threading.active_count() > 1 or tasks > 1:
            return f"{tasks} threads run in the fork server"
        return None


def _stable(env: Any) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in VOLATILE_ENV}


def _module_files() -> set[str]:
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            files.add(os.path.abspath(path))
    return files


def _site_dirs() -> set[str]:
    # A directory's mtime changes when an entry is added or removed: a package
    # installed, or a .pth file that only an interpreter's start would read. Other
    # sys.path directories (the application's) are read afresh by each import.
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return {os.path.abspath(path) for path in dirs if os.path.isdir(path)}


def _stat(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def _stat_all(paths: set[str]) -> dict[str, tuple[int, int] | None]:
    return {path: _stat(path) for path in sorted(paths)}
