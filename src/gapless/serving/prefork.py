"""Pre-fork: N worker processes of one generation serving the same sockets.

The generation's first process (the leader) forks N workers. Each one runs the
whole serving path (imports the application, serves, drains) with
``NOTIFY_SOCKET`` pointed at the leader, so the manager sees one process per
generation, exactly as with one worker:

* the leader sends ``READY=1`` once every worker sent its own, so a reload
  replaces all N at once, generation by generation;
* on SIGTERM or SIGINT it sends ``STOPPING=1`` and passes the signal to every
  worker (a second one too: that cuts their drains), then exits 0 once all of
  them exited;
* a worker that fails before the generation is ready fails the generation
  (exit 3, the reload fails, the serving generation carries on); one that dies
  later is replaced, unless it died before its own ``READY=1``, which would only
  repeat;
* workers get SIGTERM if the leader dies (``PR_SET_PDEATHSIG``), and share its
  process group, which the manager kills at the drain deadline. (So Ctrl-C in a
  terminal, without a manager, reaches the workers as well as the leader: the
  leader's SIGTERM is then their second signal, which cuts the drain. Under a
  manager each generation has a process group of its own.)

The leader waits on events only: a pidfd per worker, the notify socket and the
signal wakeup fd, in one ``selectors`` loop.

Example::

    code = run_workers([serve_the_app] * 4, Hooks())
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import signal
import sys
import traceback
from collections.abc import Callable, Sequence

from ..errors import NotifyError
from ..hooks import Hooks
from ..proc.wakeup import SignalWakeup
from ..systemd.notify import notify
from ..systemd.notify_receiver import NotifyReceiver

__all__ = ["run_workers"]

logger = logging.getLogger("gapless.serve")

_STOP = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1
_EXIT_STARTUP = 3


def run_workers(works: Sequence[Callable[[], int]], hooks: Hooks) -> int:
    """Fork one worker per item of ``works``, running it; lead them until they exit.

    Args:
        works: what each worker runs (the same callable N times for N workers of
            one application); its return value is the worker's exit code. It
            must send ``READY=1`` (to ``NOTIFY_SOCKET``) once it serves.
        hooks: ``on_ready``, ``before_shutdown`` and ``after_shutdown`` are run by
            the leader (the workers run none).

    Returns:
        0 after every worker exited following a stop; 3 when a worker failed
        before all were ready.
    """
    with contextlib.ExitStack() as stack:
        leader = _Leader(works, hooks, stack)
        return leader.run()


class _Leader:
    def __init__(
        self, works: Sequence[Callable[[], int]], hooks: Hooks, stack: contextlib.ExitStack
    ) -> None:
        self.works = list(works)
        self.count = len(self.works)
        self.hooks = hooks
        self.selector = stack.enter_context(selectors.DefaultSelector())
        self.receiver = stack.enter_context(NotifyReceiver())
        self.signals = stack.enter_context(SignalWakeup(_STOP))
        self.selector.register(self.signals, selectors.EVENT_READ, self._on_signal)
        self.selector.register(self.receiver, selectors.EVENT_READ, self._on_notify)
        self._prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork
        self.workers: dict[int, int] = {}  # pid: pidfd
        self.work_of: dict[int, Callable[[], int]] = {}
        self.ready: set[int] = set()
        self.phase = "starting"  # then "serving", "draining"
        self.failed = False  # a worker failed before the generation was ready
        self.exit_code: int | None = None

    def run(self) -> int:
        for work in self.works:
            self._fork(work)
        while self.exit_code is None:
            for key, _ in self.selector.select():
                key.data(key.fileobj)
        if not self.failed:
            self.hooks.run("after_shutdown")
        return self.exit_code

    def _fork(self, work: Callable[[], int]) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            self._become_worker(parent, work)
        pidfd = os.pidfd_open(pid)
        self.workers[pid] = pidfd
        self.work_of[pid] = work
        self.selector.register(pidfd, selectors.EVENT_READ, lambda _: self._on_exit(pid))
        return pid

    def _become_worker(self, parent: int, work: Callable[[], int]) -> None:
        code = _EXIT_STARTUP
        try:
            signal.set_wakeup_fd(-1)
            for sig in _STOP:
                signal.signal(sig, signal.SIG_DFL)
            for pidfd in self.workers.values():
                os.close(pidfd)
            for closable in (self.selector, self.receiver):
                closable.close()
            self.signals.close_in_forked_child()
            self._prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent:  # the leader died before prctl
                os._exit(0)
            os.environ["NOTIFY_SOCKET"] = self.receiver.address
            code = work()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else _EXIT_STARTUP
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _on_signal(self, _: object) -> None:
        if self.signals.take():
            self._stop()

    def _stop(self) -> None:
        if self.phase != "draining":
            starting, self.phase = self.phase == "starting", "draining"
            logger.info("stopping: draining %d workers", len(self.workers))
            if not starting:
                _tell(stopping=True, status="draining")
                self.hooks.run("before_shutdown")
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not self.workers:
            self.exit_code = _EXIT_STARTUP if self.failed else 0

    def _on_notify(self, receiver: object) -> None:
        while True:
            try:
                note = self.receiver.receive()
            except NotifyError as exc:
                logger.warning("ignored a worker's notification: %s", exc)
                continue
            if note is None:
                break
            if note.ready and note.pid in self.workers:
                self.ready.add(note.pid)
        if self.phase == "starting" and len(self.ready) == self.count:
            self.phase = "serving"
            logger.info("%d workers ready: pids %s", self.count, sorted(self.ready))
            _tell(ready=True, status=f"{self.count} workers serving")
            self.hooks.run("on_ready")

    def _on_exit(self, pid: int) -> None:
        pidfd = self.workers.pop(pid)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        was_ready = pid in self.ready
        work = self.work_of.pop(pid)
        self.ready.discard(pid)
        what = _describe(status)
        if self.phase == "draining":
            if not self.workers:
                self.exit_code = _EXIT_STARTUP if self.failed else 0
        elif self.phase == "starting":
            logger.error("worker %d %s before the generation was ready; stopping", pid, what)
            self.failed = True
            self._stop()  # the ready ones may hold connections already: they drain
        elif was_ready:
            replacement = self._fork(work)
            logger.warning("worker %d %s; started worker %d in its place", pid, what, replacement)
        else:
            logger.error("worker %d %s before it was ready; not replaced", pid, what)


def _tell(**fields: object) -> None:
    try:
        notify(**fields)  # type: ignore[arg-type]
    except NotifyError as exc:
        logger.warning("cannot tell the manager: %s", exc)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
