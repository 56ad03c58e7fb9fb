"""Prove from your own test suite that your app reloads without losing a request.

:func:`check_reloads` starts the app under gapless (``gapless serve MODULE:APP``,
or ``gapless run -- COMMAND`` for a command list) on a free port of 127.0.0.1 (or
``bind``), with a control socket of its own in a temporary directory; it loads it
with keep-alive requests at a fixed rate (the open-loop prober of ``gapless
bench``, so no wrk is needed), runs ``gapless reload`` N times, each one complete
when the new generation is ready and the old one has exited, stops the manager and
returns what it saw: a frozen :class:`ReloadReport`. Every wait has a deadline;
missing one, or any other reason the check cannot run, raises
:class:`ReloadCheckError` (from :mod:`gapless.errors`). It blocks for about
``duration`` seconds plus the start: from an async test, call it in a thread.

The server imports the app with this process's ``sys.path`` (passed on as
``PYTHONPATH``): what your test can import, it can.

Example (pytest)::

    from gapless.testing import check_reloads

    def test_reloads_lose_nothing():
        report = check_reloads("myapp:app", reloads=3)
        report.assert_no_loss()  # AssertionError naming each class of failure
"""

from __future__ import annotations

import os
import select
import shlex
import socket
import sys
import tempfile
import time
import types
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .bench.notifications import DiscardingReader
from .bench.prober import FAILURES, Sample
from .bench.runner import BenchConfig, BenchResult, run_bench
from .bench.strategies import RunStrategy
from .errors import BenchError, BindError, ReloadCheckError
from .proc.spawn import Child
from .sockets.addresses import TcpAddress, parse_bind
from .systemd.notify_receiver import NotifyReceiver

__all__ = ["FailedRequest", "ReloadCheckError", "ReloadReport", "check_reloads"]

EXAMPLES_PER_CLASS = 3
_GAPLESS = (sys.executable, "-m", "gapless.cli")


@dataclass(frozen=True)
class FailedRequest:
    """One request that got no good answer.

    ``outcome`` is one of ``refused``, ``reset``, ``closed`` (closed before a whole
    answer), ``timeout``, ``status>=500`` or ``other``; ``at`` is when it was sent,
    in seconds after the load started; ``reload`` is the reload (from 1) it overlapped,
    0 if none.
    """

    outcome: str
    at: float
    reload: int

    def __str__(self) -> str:
        during = f"during reload {self.reload}" if self.reload else "between reloads"
        return f"{self.outcome} at {self.at:.2f} s ({during})"


@dataclass(frozen=True)
class ReloadReport:
    """What :func:`check_reloads` saw; times are in seconds.

    ``ready_seconds[i]`` runs from reload ``i + 1``'s ``gapless reload`` to its new
    generation ready, ``retired_seconds[i]`` to the last old process exited.
    ``by_class`` counts the failed requests of each outcome; ``examples`` holds the
    first few of each.
    """

    target: str
    requests: int
    failed: int
    reloads: int
    ready_seconds: tuple[float, ...]
    retired_seconds: tuple[float, ...]
    by_class: Mapping[str, int] = field(hash=False)
    examples: tuple[FailedRequest, ...]

    @property
    def line(self) -> str:
        """``<N> requests, <F> failed, <R> reloads``, as ``gapless bench`` ends."""
        return f"{self.requests} requests, {self.failed} failed, {self.reloads} reloads"

    def assert_no_loss(self) -> None:
        """Raise AssertionError, with a summary, unless every request was answered.

        Raises:
            AssertionError: a request failed, or none was sent.
        """
        if self.requests == 0:
            raise AssertionError(f"{self.target}: no request was sent; raise duration or rate")
        if self.failed:
            classes = ", ".join(f"{name} {count}" for name, count in self.by_class.items())
            examples = "; ".join(str(example) for example in self.examples)
            raise AssertionError(
                f"{self.target}: {self.failed} of {self.requests} requests failed over"
                f" {self.reloads} reloads ({classes}); e.g. {examples}"
            )


def check_reloads(
    target: str | Sequence[str],
    *,
    reloads: int = 3,
    duration: float = 3.0,
    rate: float = 200.0,
    connections: int = 8,
    options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    bind: str = "127.0.0.1:0",
    timeout: float = 30.0,
) -> ReloadReport:
    """Run ``target`` under gapless, under load, through ``reloads`` reloads.

    Args:
        target: ``"MODULE:APP"`` for ``gapless serve``, or a command (a list) for
            ``gapless run``, which must serve the socket it is handed (fd 3,
            ``LISTEN_FDS``), e.g. ``["gunicorn", "myapp:app"]``.
        reloads: how many times to reload, spread evenly over ``duration``.
        duration: seconds of load (longer if the reloads take longer).
        rate: requests per second, sent whether or not earlier ones were answered.
        connections: keep-alive connections the requests share.
        options: more options for ``gapless serve`` or ``gapless run``, e.g.
            ``["--workers", "2"]`` or ``["--ready", "notify"]``.
        env: more environment for the manager and the app.
        bind: where the app listens, ``HOST:PORT`` (port 0: a free one).
        timeout: seconds any one wait (start, reload, stop) may take.

    Returns:
        The counts, failures and reload latencies seen.

    Raises:
        ReloadCheckError: a bad argument, an app that exited or was not ready in
            time, a reload that failed or timed out, a manager that did not stop.
    """
    _check_arguments(target, reloads, duration, rate, connections, timeout)
    name = target if isinstance(target, str) else shlex.join(target)
    config = BenchConfig(
        address=_address(bind),
        reloads=reloads,
        duration=duration,
        rate=rate,
        connections=connections,
        wrk=False,
        pin=False,  # the caller's process keeps its CPU affinity
        timeout=timeout,
    )
    manager = _Manager(_command(target, options), _environment(env), timeout)
    try:
        result = run_bench(config, manager)
    except BenchError as exc:
        raise ReloadCheckError(f"check_reloads({name!r}): {exc}") from None
    return _report(name, result)


def _check_arguments(
    target: str | Sequence[str],
    reloads: int,
    duration: float,
    rate: float,
    connections: int,
    timeout: float,
) -> None:
    if isinstance(target, str) and target.count(":") != 1:
        raise ReloadCheckError(
            f"check_reloads: target {target!r} is no MODULE:APP; pass e.g. 'myapp:app', "
            "or a command list for gapless run"
        )
    if not isinstance(target, str) and not list(target):
        raise ReloadCheckError("check_reloads: the command is empty; pass e.g. ['gunicorn', 'a:b']")
    for what, value in (("duration", duration), ("rate", rate), ("timeout", timeout)):
        if not value > 0:
            raise ReloadCheckError(f"check_reloads: {what}={value!r}; pass a positive number")
    for what, count in (("reloads", reloads), ("connections", connections)):
        if count < 1:
            raise ReloadCheckError(f"check_reloads: {what}={count!r}; pass 1 or more")


def _address(bind: str) -> TcpAddress:
    try:
        address = parse_bind(bind).address
    except BindError as exc:
        raise ReloadCheckError(f"check_reloads: {exc}") from None
    if not isinstance(address, TcpAddress):
        raise ReloadCheckError(
            f"check_reloads: bind={bind!r} is no TCP address; pass HOST:PORT, e.g. '127.0.0.1:0'"
        )
    return address


def _command(target: str | Sequence[str], options: Sequence[str]) -> tuple[list[str], list[str]]:
    """The manager's command line, as what goes before ``--bind ... --control ...``
    and what goes after."""
    if isinstance(target, str):
        return [*_GAPLESS, "serve", target, *options], []
    return [*_GAPLESS, "run", *options], ["--", *target]


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    """``env`` with this process's import path prepended to ``PYTHONPATH``."""
    extra = dict(env or {})
    given = extra.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    paths = [path for path in sys.path if path] + ([given] if given else [])
    extra["PYTHONPATH"] = os.pathsep.join(paths)
    return extra


class _Manager(RunStrategy):
    """``gapless serve`` or ``gapless run`` as the bench's ``run`` strategy drives it,
    with the caller's options and environment, failing at once if the manager exits
    before it is ready."""

    name = "check"
    summary = "gapless.testing's target"

    def __init__(
        self, argv: tuple[list[str], list[str]], env: dict[str, str], timeout: float
    ) -> None:
        super().__init__([*argv[0], *argv[1]], timeout=timeout)
        self._head, self._tail = argv
        self._manager = " ".join(["gapless", argv[0][3]])  # gapless serve, gapless run
        self._env = env

    def _argv(self, address: TcpAddress) -> list[str]:
        return [*self._head, "--bind", f"web={address}", "--control", self._control, *self._tail]

    def _spawn(self, argv: list[str], sock: socket.socket | None, **env: str) -> Child:
        return super()._spawn(argv, sock, **{**self._env, **env})

    def start(self, address: TcpAddress) -> None:
        self.address = address
        self._receiver = NotifyReceiver()
        self._directory = tempfile.mkdtemp(prefix="gapless-testing-")
        self._control = os.path.join(self._directory, "control.sock")
        manager = self._spawn(self._argv(address), None, NOTIFY_SOCKET=self._receiver.address)
        self._wait_ready(manager, self._receiver)
        # Read on, as a supervisor does: unread, the queue fills and the manager blocks.
        self._reader = DiscardingReader(self._receiver)
        self._active = self._active_pid()

    def _wait_ready(self, manager: Child, receiver: NotifyReceiver) -> None:
        """Wait for the manager's READY=1, or its exit, or the deadline.

        Raises:
            BenchError: it exited, or was not ready within the timeout.
        """
        deadline = time.monotonic() + self.timeout
        while (remaining := deadline - time.monotonic()) > 0:
            readable = select.select([receiver.fileno(), manager.pidfd], [], [], remaining)[0]
            if manager.pidfd in readable:
                self._pumps[-1].close(min(self.timeout, 5.0))  # its last lines, all read
                status = manager.poll()
                how = status.describe() if status is not None else "exited"
                raise BenchError(f"{self._manager} {how} before it was ready")
            notification = receiver.receive() if readable else None
            if notification is not None and notification.ready and notification.pid == manager.pid:
                return
        raise BenchError(
            f"{self._manager} was not ready within {self.timeout:g} s;"
            " if it starts slowly, raise timeout="
        )


def _report(target: str, result: BenchResult) -> ReloadReport:
    windows = [
        (r.signalled - result.t0, max(r.ready, r.old_exited) - result.t0) for r in result.reloads
    ]
    failures = [
        FailedRequest(sample.outcome, sample.start, _window(sample, windows))
        for sample in result.samples
        if sample.outcome != "ok"
    ]
    counts = Counter(failure.outcome for failure in failures)
    examples = [
        failure
        for outcome in FAILURES
        for failure in [f for f in failures if f.outcome == outcome][:EXAMPLES_PER_CLASS]
    ]
    return ReloadReport(
        target=target,
        requests=len(result.samples),
        failed=len(failures),
        reloads=len(result.reloads),
        ready_seconds=tuple(r.ready - r.signalled for r in result.reloads),
        retired_seconds=tuple(r.old_exited - r.signalled for r in result.reloads),
        by_class=types.MappingProxyType({name: counts[name] for name in FAILURES if counts[name]}),
        examples=tuple(examples),
    )


def _window(sample: Sample, windows: list[tuple[float, float]]) -> int:
    """The reload (from 1) whose window ``sample``'s lifetime overlaps, 0 if none."""
    end = sample.start + sample.latency
    for number, (start, stop) in enumerate(windows, 1):
        if sample.start <= stop and end >= start:
            return number
    return 0
