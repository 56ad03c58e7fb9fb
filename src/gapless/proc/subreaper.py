"""PID 1 duties of the manager: adopting orphans and telling when a group is gone.

A server's workers and grandchildren may outlive the process the manager
started. As a child subreaper (``PR_SET_CHILD_SUBREAPER``) the manager becomes
their parent when their own parent dies, so it can reap them (no zombies in a
container where it runs as PID 1) and see, on each SIGCHLD, whether anything of
a generation's process group is left.

Example::

    set_child_subreaper()
    group_members(child.pid)   # [child.pid, worker1, worker2] while they run
"""

from __future__ import annotations

import ctypes

from .procfs import all_stats

__all__ = ["group_members", "set_child_subreaper"]

_PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper() -> bool:
    """Make orphaned descendants of this process its children (prctl(2)).

    Returns:
        True if the kernel accepted it; False where prctl is unavailable.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``, leader first.

    Args:
        pgid: the group, i.e. the pid of the process that created it.

    Returns:
        Their pids; ``[]`` when the group is empty. Read from /proc, on demand only.
    """
    members = [
        pid for pid, fields in all_stats() if fields[0] != b"Z" and fields[2] == b"%d" % pgid
    ]
    return sorted(members, key=lambda pid: (pid != pgid, pid))
