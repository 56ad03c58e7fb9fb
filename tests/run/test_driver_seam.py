"""The Driver through whole reloads with no process: a fake behind gapless.run.processes.

The fake's processes record the signals sent to them and exit when the test says;
readiness arrives as a real notify datagram on a real NotifyReceiver, sent from this
test process, which the fake names part of the starting generation's tree.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from gapless.proc.spawn import ExitStatus
from gapless.proc.watchdog import Watchdog
from gapless.run.children import GenerationProcess
from gapless.run.config import ManagerConfig
from gapless.run.driver import Driver
from gapless.run.eventlog import EventLog
from gapless.run.generations import ReloadResult
from gapless.run.processes import OnExit
from gapless.run.readiness import ReadyMode
from gapless.run.upstream import Upstream
from gapless.systemd.notify import notify
from gapless.systemd.notify_receiver import NotifyReceiver

# Above the kernel's largest pid_max (2**22): no process has it, so /proc knows none.
_NO_PID = 1 << 22


@dataclass
class FakeChild:
    """A generation's leader that records the signals sent to it."""

    pid: int
    signals: list[int] = field(default_factory=list)
    group_signals: list[int] = field(default_factory=list)
    stderr_fd: int | None = None

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def kill_group(self, sig: int) -> None:
        self.group_signals.append(sig)


class FakeChildren:
    """Processes whose spawn, exit and notify sender the test decides."""

    def __init__(self, on_exit: OnExit) -> None:
        self._on_exit = on_exit
        self._procs: dict[int, GenerationProcess] = {}
        self.spawned: list[int] = []
        self.notifier: dict[int, int] = {}  # the pid a datagram comes from -> generation
        self.watchdog: Watchdog | None = None

    def spawn(
        self,
        number: int,
        command: Sequence[str],
        listeners: Sequence[tuple[str | None, socket.socket]],
        env: Mapping[str, str],
        death_signal: int | None = None,
        warm: bool = False,
    ) -> GenerationProcess:
        proc = GenerationProcess(number, FakeChild(_NO_PID + number))  # type: ignore[arg-type]
        self._procs[number] = proc
        self.spawned.append(number)
        return proc

    def start_forkserver(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        pass

    def retire_forkserver(self, why: str) -> None:
        pass

    def exit(self, number: int, returncode: int) -> None:
        """The leader of generation ``number`` exits (as its pidfd would tell)."""
        proc = self._procs[number]
        proc.status = ExitStatus(returncode)
        self._on_exit(proc)

    def signals(self, number: int) -> list[int]:
        child = self._procs[number].child
        assert isinstance(child, FakeChild)
        return child.signals

    def adopt_watchdog(self, state: Mapping[str, int] | None) -> None:
        raise AssertionError("no exec in place here")

    def adopt(
        self, number: int, pid: int, stderr_fd: int | None, stdout_fd: int | None = None
    ) -> GenerationProcess:
        raise AssertionError("no exec in place here")

    def reap(self) -> None:
        pass  # exits come from exit()

    def process(self, number: int) -> GenerationProcess | None:
        return self._procs.get(number)

    def sender(self, pid: int, first: int | None = None) -> GenerationProcess | None:
        number = self.notifier.get(pid)
        proc = None if number is None else self._procs.get(number)
        return proc if proc is not None and proc.status is None else None

    def lingering(self, proc: GenerationProcess) -> bool:
        return False  # the group goes with its leader

    def release(self, number: int) -> None:
        self._procs.pop(number, None)

    def live(self) -> list[GenerationProcess]:
        return list(self._procs.values())

    def close(self) -> None:
        self._procs.clear()


@dataclass
class Rig:
    driver: Driver
    children: FakeChildren
    receiver: NotifyReceiver
    reports: list[ReloadResult]
    selector: selectors.BaseSelector

    def ready(self, number: int) -> None:
        """Generation ``number`` sends READY=1, and the manager's loop reads it."""
        self.children.notifier = {os.getpid(): number}
        assert notify(ready=True, environ={"NOTIFY_SOCKET": self.receiver.address})
        self.driver.on_notify(self.receiver)

    def states(self) -> list[tuple[int, str]]:
        status = self.driver.status([], {})
        return [(gen["generation"], gen["state"]) for gen in status["generations"]]


@contextmanager
def rig(hook_shell: str = "/bin/sh", **settings: Any) -> Iterator[Rig]:
    config = ManagerConfig(command=["server"], ready=ReadyMode.parse("notify"), **settings)
    log = EventLog("text")
    made: list[FakeChildren] = []

    def children(on_exit: OnExit) -> FakeChildren:
        made.append(FakeChildren(on_exit))
        return made[0]

    reports: list[ReloadResult] = []
    with selectors.DefaultSelector() as selector, NotifyReceiver() as receiver:
        driver = Driver(
            config,
            {},
            selector,
            log,
            Upstream("", log),
            lambda result, stderr: reports.append(result),
            children=children,
            hook_shell=hook_shell,
        )
        try:
            driver.start([], receiver, boot=True)
            yield Rig(driver, made[0], receiver, reports, selector)
        finally:
            driver.close()


def test_reload_spawns_the_next_then_stops_the_old_once_the_next_is_ready() -> None:
    with rig() as r:
        assert r.children.spawned == [1]
        r.ready(1)
        assert r.states() == [(1, "active")]
        assert [(res.generation, res.ok) for res in r.reports] == [(1, True)]

        r.driver.request_reload(None)
        assert r.children.spawned == [1, 2]
        assert r.states() == [(1, "active"), (2, "starting")]
        assert r.children.signals(1) == []

        r.ready(2)
        assert r.children.signals(1) == [signal.SIGTERM]
        assert r.states() == [(1, "draining"), (2, "active")]
        assert [(res.generation, res.ok) for res in r.reports] == [(1, True), (2, True)]

        r.children.exit(1, 0)
        assert r.states() == [(2, "active")]
        assert r.children.process(1) is None  # released
        assert r.children.signals(2) == []
        assert r.driver.serving and r.driver.exit_code is None


def test_a_generation_exiting_before_ready_fails_the_reload_and_spares_the_old() -> None:
    with rig() as r:
        r.ready(1)
        r.driver.request_reload(None)
        assert r.children.spawned == [1, 2]

        r.children.exit(2, 3)
        assert r.children.signals(1) == []
        assert r.states() == [(1, "active")]
        last = r.reports[-1]
        assert (last.generation, last.ok) == (2, False)
        assert "generation 2 exited with code 3 before it was ready" in last.reason
        assert r.children.process(2) is None  # released
        assert r.driver.serving and r.driver.exit_code is None


def test_a_reload_waits_for_its_before_reload_hook_and_so_does_its_ready_deadline() -> None:
    with rig(before_reload="exit 0", ready_timeout=5.0) as r:
        r.ready(1)
        r.driver.request_reload(None)
        assert r.children.spawned == [1]  # not yet: the hook runs
        assert r.states() == [(1, "active"), (2, "starting")]
        while r.children.spawned == [1]:
            events = r.selector.select(10.0)
            assert events, "the hook did not end"
            for key, _ in events:
                key.data()
        spawned = time.monotonic()
        status = r.driver.status([], {})["generations"][1]
        assert status["generation"] == 2 and status["age"] < 1.0  # counted from its spawn
        wake_at = r.driver.wake_at()  # the ready deadline: 5 s after the spawn
        assert wake_at is not None and spawned + 4.0 < wake_at <= spawned + 5.0
        r.ready(2)
        assert [(res.generation, res.ok) for res in r.reports] == [(1, True), (2, True)]


def test_a_before_reload_hook_that_cannot_start_fails_the_reload_and_spares_the_old() -> None:
    with rig(before_reload="true", hook_shell="/nonexistent/sh") as r:
        r.ready(1)
        r.driver.request_reload(None)
        assert r.children.spawned == [1]
        assert r.states() == [(1, "active")]
        last = r.reports[-1]
        assert (last.generation, last.ok) == (2, False)
        assert last.reason == (
            "generation 2 not started: before-reload hook `true` could not start: "
            "No such file or directory"
        )
        assert r.driver.serving and r.driver.exit_code is None
