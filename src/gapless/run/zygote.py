"""The fork server: a Python process that imported a server stack once and forks
each new generation from it, so a reload skips the interpreter's start and the
stack's imports (the generation still imports the application afresh).

::

    python -m gapless.run.zygote -m MODULE [ARG...]   # fd 3: the manager's end

The manager (:mod:`gapless.run.warm`) starts it with one ``SOCK_SEQPACKET``
socket as ``LISTEN_FDS``. It imports ``MODULE`` and calls its
``warm_up(args)`` if it has one (:func:`gapless.serving.child.warm_up` imports
uvicorn's protocols, the drain, asyncio...), records every module file it then
holds, and says ``{"ready": ...}``. Each request names a generation's argv,
environment and directory and carries its fds (a go pipe, stderr, stdout, the
listeners). The fork server answers ``{"stale": why}`` instead of forking when
anything it imported changed on disk (path, size, mtime of each module file, a
directory of ``sys.path``, the interpreter), the environment or the directory
differ from its own, or a thread runs in it: a fork would then run code other
than what a cold start runs. Otherwise it forks twice, so that the generation's
parent becomes the manager (a child subreaper) and the manager reaps it as any
child, and answers ``{"pid": ...}``.

The generation puts its fds where systemd would (listeners at 3, 4, ...,
``LISTEN_PID`` its own), waits until it is the manager's child, asks for the
death signal, and waits for the manager's go (EOF instead: the manager gave up
on it, so it exits untouched). Then it runs ``MODULE`` as ``__main__`` with
``runpy``, as ``python -m`` does, and exits as an interpreter does (threads
joined, ``atexit`` run, streams flushed).

Every generation forked shares the fork server's hash seed (``random`` is
reseeded at fork); a cold start, e.g. ``gapless reload --cold``, gets its own.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import functools
import importlib
import io
import json
import os
import runpy
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from ..proc.forkexec import fork_signals_blocked
from .staleness import Snapshot

__all__ = ["main"]

FIRST_FD = 3
_PR_SET_PDEATHSIG = 1
_MAX_MESSAGE = 1 << 20
_MAX_FDS = 253  # SCM_MAX_FD


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "-m" or os.environ.get("LISTEN_FDS") != "1":
        print("usage: python -m gapless.run.zygote -m MODULE [ARG...], fd 3 given", file=sys.stderr)
        return 2
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    channel = socket.socket(fileno=FIRST_FD)
    channel.set_inheritable(False)
    module, module_args = args[1], args[2:]
    started = time.monotonic()
    try:
        warm_up: Callable[[list[str]], None] | None = getattr(
            importlib.import_module(module), "warm_up", None
        )
        if warm_up is not None:
            warm_up(module_args)
    except BaseException:  # reported to the manager, which starts cold
        _send(channel, {"error": traceback.format_exc(limit=3).strip().splitlines()[-1]})
        return 1
    snapshot = Snapshot()
    seconds = round(time.monotonic() - started, 3)
    _send(channel, {"ready": True, "modules": len(snapshot.files), "seconds": seconds})
    return _serve(channel, snapshot, module)


def _serve(channel: socket.socket, snapshot: Snapshot, module: str) -> int:
    libc = ctypes.CDLL(None, use_errno=True)  # looked up before any fork
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(channel, _MAX_MESSAGE, _MAX_FDS)
        except InterruptedError:
            continue
        if not data:
            return 0  # the manager closed its end: it stopped, or replaces us
        try:
            request = json.loads(data)
            reason = snapshot.changed(request["env"], request["cwd"])
            order = _Order(request, fds, module, libc)
            answer = {"stale": reason} if reason else _fork(order)
        except Exception as exc:  # a bad request fails alone
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        _send(channel, answer)


def _send(channel: socket.socket, message: dict[str, Any]) -> None:
    channel.sendall(json.dumps(message).encode())


@dataclass(frozen=True)
class _Order:
    """One generation to fork: the request, its fds [go, stderr, stdout, listener...]."""

    request: dict[str, Any]
    fds: list[int]
    module: str
    libc: Any


def _fork(order: _Order) -> dict[str, Any]:
    """Fork the generation through an intermediate that exits at once; its pid."""
    pid_r, pid_w = os.pipe()
    try:
        intermediate = fork_signals_blocked(functools.partial(_intermediate, order, pid_w))
        os.close(pid_w)
        pid_w = -1
        text = b""
        while chunk := os.read(pid_r, 64):
            text += chunk
        os.waitpid(intermediate, 0)
    finally:
        os.close(pid_r)
        if pid_w >= 0:
            os.close(pid_w)
    if not text.isdigit():
        return {"error": f"could not fork the generation: {text.decode(errors='replace')}"}
    return {"pid": int(text)}


def _intermediate(order: _Order, pid_w: int) -> NoReturn:
    try:
        me = os.getpid()
        pid = os.fork()  # signals are still blocked, as fork_signals_blocked left them
        if pid == 0:
            os.close(pid_w)
            _generation(order, me)
        os.write(pid_w, b"%d" % pid)
    except BaseException as exc:  # reported through the pipe
        os.write(pid_w, repr(exc).encode()[:200])
    os._exit(0)


def _generation(order: _Order, intermediate: int) -> NoReturn:
    code = 1
    request = order.request
    try:
        os.setpgid(0, 0)
        go = _place_fds(order.fds)
        os.environ.clear()
        os.environ.update(request["env"])
        _reopen_stdio()
        os.environ["LISTEN_PID"] = str(os.getpid())
        manager, death_signal = int(request["manager"]), int(request["death_signal"])
        _become_managed(manager, death_signal, order.libc, intermediate)
        if os.read(go, 1) != b"g":
            os._exit(1)  # the manager gave up on this fork: nothing was started
        os.close(go)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        code = _run_module(order.module, request["argv"])
    except BaseException:  # never unwind into the fork server's loop
        traceback.print_exc()
    _finish()
    os._exit(code)


def _reopen_stdio() -> None:
    """New sys.stdout and sys.stderr on the new fds 1 and 2, buffered as a fresh
    interpreter would buffer them (by isatty, PYTHONUNBUFFERED), not as the fork
    server's were for its own fds."""
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    for fd, name in ((1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        encoding = getattr(old, "encoding", None) or "utf-8"
        errors = "backslashreplace" if fd == 2 else getattr(old, "errors", None) or "strict"
        line_buffered = fd == 2 or os.isatty(fd)
        raw = io.FileIO(fd, "w", closefd=False)
        stream = io.TextIOWrapper(
            raw if unbuffered else io.BufferedWriter(raw),
            encoding=encoding,
            errors=errors,
            line_buffering=line_buffered,
            write_through=unbuffered,
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _place_fds(fds: list[int]) -> int:
    """fds are [go, stderr, stdout, listener...] (gapless.run.warm sends them so):
    listeners to 3, 4, ..., stderr to 2, stdout to 1, the rest closed; return go's
    new fd."""
    go, stderr, stdout, *listeners = fds
    floor = FIRST_FD + len(listeners)
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in listeners]
    go = fcntl.fcntl(go, fcntl.F_DUPFD_CLOEXEC, floor)
    os.dup2(stderr, 2)
    os.dup2(stdout, 1)
    for target, fd in enumerate(moved, FIRST_FD):
        os.dup2(fd, target)
    os.closerange(floor, go)
    os.closerange(go + 1, os.sysconf("SC_OPEN_MAX"))
    return go


def _become_managed(manager: int, death_signal: int, libc: Any, intermediate: int) -> None:
    """Wait until the intermediate exited, which makes the manager our parent (it
    is the nearest child subreaper above us); then ask to die with it."""
    if os.getppid() == intermediate:
        try:
            pidfd = os.pidfd_open(intermediate)
        except ProcessLookupError:
            pass
        else:
            # The kernel reparents an exiting task's children before it wakes its pidfd.
            select.select([pidfd], [], [])
            os.close(pidfd)
    if death_signal:
        libc.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
    if os.getppid() != manager:
        os.kill(os.getpid(), death_signal or signal.SIGKILL)
        os._exit(1)


def _run_module(module: str, argv: list[str]) -> int:
    sys.argv = [module, *argv]
    # Run afresh as __main__, as `python -m` would: not the copy warm_up imported;
    # and see files added since the fork server listed the import directories.
    sys.modules.pop(module, None)
    importlib.invalidate_caches()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return _exit_code(exc.code)
    except BaseException:  # as the interpreter reports it
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _finish() -> None:
    """What the interpreter does at exit: join threads, run atexit, flush."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


if __name__ == "__main__":
    raise SystemExit(main())
