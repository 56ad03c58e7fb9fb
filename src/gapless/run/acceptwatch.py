"""Seeing, from /proc, that a starting generation has begun to accept on its sockets.

A server that speaks no notify protocol still shows when it is ready: some process of
it waits for connections on the listening socket. A TCP probe cannot see that, since
both generations share the socket and either may answer; the kernel's view of the new
generation's own processes can. :func:`accepting` looks at every process in the tree
rooted at a pid and answers True once one of them waits on one of the sockets in one of
these ways:

- **epoll** (asyncio, so uvicorn, hypercorn, aiohttp; gunicorn's gthread and async
  workers; ``selectors.DefaultSelector``): an epoll fd whose ``/proc/<pid>/fdinfo``
  lists the socket as a ``tfd:`` entry asking for readability. The entry's ``ino:``
  (hex) must equal the inode the process's fd ``tfd`` links to, so a stale fd number
  or another file with the same inode number does not count.
- **accept(2)/accept4(2)** (a blocking ``sock.accept()`` loop): a thread whose
  ``/proc/<pid>/task/<tid>/syscall`` shows accept with the socket's fd as first
  argument.
- **poll(2)/ppoll(2)** (``socketserver``, so ``http.server`` and ``wsgiref``, which use
  ``selectors.PollSelector``) and **select(2)/pselect6(2)** (gunicorn's sync worker):
  a thread blocked in the call, whose fd list, read from ``/proc/<pid>/mem``, holds
  the socket for reading. The list is read after the syscall line, so the line must be
  the same after the read: the thread was in that very call throughout.

What it cannot see: a process that left the tree (a double-forked daemon is
reparented away), a thread that waits on the socket through an fd it no longer holds,
a 32-bit process on a 64-bit kernel, or a machine other than x86_64, aarch64 and
riscv64 for the last three ways. Such servers need ``--ready notify`` or a delay.

Access: fd links and fdinfo need ptrace "read" access to the process, the syscall and
mem files need "attach" access. Root has both. A non-root manager has them for its own
uid's processes, and under Yama's default ``ptrace_scope=1`` only for its descendants,
which a generation it spawned is; a server that changed its uid is out of reach unless
we are root. A file that cannot be read, or a process that vanishes during the scan,
only means "not this one": :func:`accepting` never raises for it.

Cost: one call reads every ``/proc/<pid>/stat`` on the machine to find the tree
(``/proc/<pid>/task/<tid>/children`` needs CONFIG_PROC_CHILDREN, which many kernels
lack, and is documented as unreliable unless the process is stopped), then lists the
fds of each process in the tree; only processes that hold one of the sockets are looked
at further.

Example::

    inode = socket_inode(sock)
    child = spawn(["gunicorn", "app:app"], listeners=[sock])
    while not accepting(child.pid, {inode}):
        ...  # wait 20 ms on the manager's own events, give up at the deadline
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
from collections.abc import Collection, Mapping

from ..proc.procfs import stat_fields

__all__ = ["accepting", "socket_inode", "waiter"]

# Syscall numbers per machine: (accept, accept4), (poll, ppoll), (select, pselect6).
# aarch64 and riscv64 share the asm-generic table, which has neither poll nor select.
_X86_64 = (frozenset({43, 288}), frozenset({7, 271}), frozenset({23, 270}))
_GENERIC = (frozenset({202, 242}), frozenset({73}), frozenset({72}))
_SYSCALLS = {"x86_64": _X86_64, "aarch64": _GENERIC, "riscv64": _GENERIC}.get(os.uname().machine)

_READABLE_EPOLL = select.EPOLLIN | select.EPOLLRDNORM
_READABLE_POLL = select.POLLIN | select.POLLRDNORM
_POLLFD = struct.Struct("ihh")  # struct pollfd: int fd; short events, revents
_FD_WORD = struct.calcsize("L")  # fd_set is an array of unsigned long
_FD_WORD_BITS = 8 * _FD_WORD
_MAX_POLLFDS = 4096  # read at most 32 KiB of a poll list; a server's listener comes early
_MAX_READ = 1 << 20


def socket_inode(sock: socket.socket) -> int:
    """Return the inode that names ``sock`` in /proc (``socket:[<inode>]``).

    Args:
        sock: an open socket; the inode is the same in every process that holds it.

    Returns:
        The socket's inode number.

    Raises:
        OSError: ``sock`` is closed.
    """
    return os.fstat(sock.fileno()).st_ino


def accepting(root_pid: int, inodes: Collection[int]) -> bool:
    """Tell whether a process in the tree under ``root_pid`` waits to accept on a socket.

    The tree is ``root_pid`` and all its descendants at the time of the call. A process
    that vanishes or cannot be read counts as not accepting, so a dead ``root_pid``
    gives False.

    Args:
        root_pid: the generation's first process.
        inodes: the listening sockets' inodes, from :func:`socket_inode`.

    Returns:
        True if some thread waits for connections on one of the sockets, through epoll,
        accept, poll or select.
    """
    targets = {f"socket:[{inode}]": inode for inode in inodes}
    if not targets:
        return False
    return any(_process_accepts(pid, targets) for pid in _tree(root_pid))


def waiter(root_pid: int, inodes: Collection[int]) -> tuple[int, int] | None:
    """Like :func:`accepting`, but say who waits on which socket.

    Returns:
        ``(pid, inode)`` of the first process found waiting on one of the sockets;
        None if none does.
    """
    targets = {f"socket:[{inode}]": inode for inode in inodes}
    for pid in _tree(root_pid) if targets else ():
        held, epolls = _socket_fds(pid, targets)
        for fd, inode in held.items():
            one = {fd: inode}
            if any(_epoll_watches(pid, epfd, one) for epfd in epolls) or _thread_waits(pid, one):
                return pid, inode
    return None


def _tree(root_pid: int) -> list[int]:
    """Return ``root_pid`` and its descendants, parents before children."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return [root_pid]
    for name in names:
        if name.isdigit() and (ppid := _ppid(name)) is not None:
            children.setdefault(ppid, []).append(int(name))
    tree = [root_pid]
    seen = {root_pid}  # the stat files are read one by one, so pid reuse could loop
    for pid in tree:  # the list grows as it is walked: a breadth-first walk
        for child in children.get(pid, ()):
            if child not in seen:
                seen.add(child)
                tree.append(child)
    return tree


def _ppid(pid: str) -> int | None:
    fields = stat_fields(pid)
    return int(fields[1]) if fields is not None and fields[1].isdigit() else None


def _process_accepts(pid: int, targets: Mapping[str, int]) -> bool:
    held, epolls = _socket_fds(pid, targets)
    if not held:
        return False
    return any(_epoll_watches(pid, fd, held) for fd in epolls) or _thread_waits(pid, held)


def _socket_fds(pid: int, targets: Mapping[str, int]) -> tuple[dict[int, int], list[int]]:
    """Return the process's fds for the target sockets (fd -> inode), and its epoll fds."""
    held: dict[int, int] = {}
    epolls: list[int] = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return held, epolls
    for name in names:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed since the listing
        if link in targets:
            held[int(name)] = targets[link]
        elif link == "anon_inode:[eventpoll]":
            epolls.append(int(name))
    return held, epolls


def _epoll_watches(pid: int, epfd: int, held: Mapping[int, int]) -> bool:
    # A line reads "tfd:        3 events:       19 data: ...  pos:0 ino:5154 sdev:9";
    # kernels before ino: was added print only tfd, events and data.
    for line in _read(f"/proc/{pid}/fdinfo/{epfd}").splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] != b"tfd:":
            continue
        try:
            fd, events = int(fields[1]), int(fields[3], 16)
            inodes = [int(f[4:], 16) for f in fields[4:] if f.startswith(b"ino:")]
        except ValueError:
            continue
        if fd in held and events & _READABLE_EPOLL and inodes in ([], [held[fd]]):
            return True
    return False


def _thread_waits(pid: int, held: Mapping[int, int]) -> bool:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any(_syscall_waits(pid, f"/proc/{pid}/task/{tid}/syscall", held) for tid in tids)


def _syscall_waits(pid: int, path: str, held: Mapping[int, int]) -> bool:
    """Tell whether the thread whose syscall file is ``path`` blocks on a held socket."""
    if _SYSCALLS is None:
        return False
    accepts, polls, selects = _SYSCALLS
    # "43 0x3 0x7f... (six arguments) sp pc" while in a call; "running" or "-1 sp pc"
    # otherwise.
    line = _read(path)
    fields = line.split()
    try:
        number = int(fields[0])
        args = [int(field, 16) for field in fields[1:3]]
    except (IndexError, ValueError):
        return False
    if len(args) < 2:
        return False
    if number in accepts:
        return args[0] in held
    if number in polls:
        found = _polls(pid, args[0], args[1], held)
    elif number in selects:
        found = _selects(pid, args[0], args[1], held)
    else:
        return False
    return found and _read(path) == line


def _polls(pid: int, pollfds: int, count: int, held: Mapping[int, int]) -> bool:
    data = _read_memory(pid, pollfds, min(count, _MAX_POLLFDS) * _POLLFD.size)
    whole = len(data) - len(data) % _POLLFD.size
    return any(
        fd in held and events & _READABLE_POLL
        for fd, events, _ in _POLLFD.iter_unpack(data[:whole])
    )


def _selects(pid: int, nfds: int, readfds: int, held: Mapping[int, int]) -> bool:
    wanted = [fd for fd in held if fd < nfds]
    if not readfds or not wanted:
        return False
    words = (max(wanted) // _FD_WORD_BITS) + 1
    data = _read_memory(pid, readfds, words * _FD_WORD)
    for fd in wanted:
        word = data[fd // _FD_WORD_BITS * _FD_WORD :][:_FD_WORD]
        if len(word) == _FD_WORD and int.from_bytes(word, sys.byteorder) >> fd % _FD_WORD_BITS & 1:
            return True
    return False


def _read(path: str) -> bytes:
    """Return the file's content, or b"" if it cannot be read (gone, no permission)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    chunks = []
    total = 0
    try:
        while total < _MAX_READ and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            total += len(chunk)
    except OSError:
        return b""
    finally:
        os.close(fd)
    return b"".join(chunks)


def _read_memory(pid: int, address: int, size: int) -> bytes:
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.pread(fd, size, address)
    except (OSError, OverflowError):
        return b""
    finally:
        os.close(fd)
