"""The process a supervisor watches under ``gapless run --handoff``.

A supervisor restart (daemontools ``svc -t``, runit ``sv restart``, s6
``s6-svc -r``, ``supervisorctl restart``) sends TERM to the process it started,
waits for it to exit, then starts the command again. For the generation that
serves to outlive that, it must not be a child of the process that exits: with
``--handoff``, ``gapless run`` forks, the manager runs in the child (in its own
process group, so a signal to the front's group does not reach it), and the
process the supervisor started stays a *front* that:

* forwards HUP, INT, USR1 and USR2 to the manager (a reload, a real stop, ...);
* on TERM exits at once with status 0, which closes the *lifeline* pipe: the
  manager sees EOF, serves on detached, and the next instance takes its sockets
  over the handoff socket (gapless.run.extras.handoff);
* exits with the manager's status when the manager exits (``gapless stop``, a
  failed first start, SIGINT);
* owns the PID file (``--pid-file``): it names the front, the process a
  supervisor or a script signals.

Why this shape: the supervised process must exit promptly, and a generation's
parent must stay alive (a generation gets its stop signal when its parent dies,
so that a manager killed outright leaves nothing serving for ever). The manager
forked at start is both: it never has to move its children or bookkeeping, and
everything it does (deadlines, stderr, logs) goes on unchanged while detached.
The price is one small idle process per instance.

Example::

    sys.exit(run_front(config))     # returns in both processes: front and manager
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import sys

from ...proc.pidfile import remove_pid_file, write_pid_file
from ...proc.wakeup import SignalWakeup
from ..config import ManagerConfig
from ..eventlog import EventLog

__all__ = ["run_front"]

_FORWARDED = (signal.SIGHUP, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
_CAUGHT = (*_FORWARDED, signal.SIGTERM)


def run_front(config: ManagerConfig) -> int:
    """Fork the manager, then act as the front; see the module docstring.

    Returns:
        In the front: 0 after TERM, else the manager's exit status. In the forked
        manager: its own exit code (the caller exits with it).

    Raises:
        GaplessError: in the manager, as :meth:`Manager.run`; in the front, the PID
            file could not be written.
    """
    from ..manager import Manager

    if config.pid_file is not None:
        write_pid_file(config.pid_file)  # before the manager exists: a failure starts nothing
    lifeline_read, lifeline_write = os.pipe()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _CAUGHT)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:
        os.close(lifeline_write)
        os.setpgid(0, 0)
        if os.environ.get("LISTEN_PID") == str(os.getppid()):
            os.environ["LISTEN_PID"] = str(os.getpid())  # socket activation: ours now
        # The manager unblocks its signals once it catches them (as after an exec).
        return Manager(dataclasses.replace(config, pid_file=None), lifeline=lifeline_read).run()
    os.close(lifeline_read)
    try:
        return _front(config, pid, old_mask)
    finally:
        os.close(lifeline_write)


def _front(config: ManagerConfig, manager: int, mask: set[int | signal.Signals]) -> int:
    log = EventLog(config.log_format)
    pidfd = os.pidfd_open(manager)
    with contextlib.ExitStack() as stack:
        stack.callback(os.close, pidfd)
        signals = stack.enter_context(SignalWakeup(_CAUGHT))
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if config.pid_file is not None:
            stack.callback(remove_pid_file, config.pid_file)
        log.event("front", f"supervised as pid {os.getpid()}; the manager runs as pid {manager}")
        while True:
            ready = select.select([signals.fileno(), pidfd], [], [])[0]
            if pidfd in ready:
                return _exit_status(manager)
            for sig in signals.take():
                if sig == signal.SIGTERM:
                    log.event(
                        "detached",
                        f"SIGTERM: exiting; the manager (pid {manager}) serves on until "
                        "the next instance takes over or the handoff timeout passes",
                    )
                    return 0
                with contextlib.suppress(ProcessLookupError):
                    os.kill(manager, sig)


def _exit_status(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code
