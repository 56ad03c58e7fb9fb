"""The manager's log as bench/chaos.py reads it: ``--log-format json`` lines, each
counted by event and waking whoever waits on one (a start, a readiness, an exit),
so the campaign's waits are on the manager's own word, never on a timer.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter, deque
from collections.abc import Callable
from typing import IO, Any

from chaos_basics import TIMEOUT, FaultProblem


class ManagerLog(threading.Thread):
    """Reads one manager's ``--log-format json`` stderr: keeps a tail and what each
    generation did, and wakes waiters at every line."""

    def __init__(self, stream: IO[str], sink: IO[str] | None, leaders: set[int]) -> None:
        super().__init__(daemon=True, name="manager-log")
        self._stream, self._sink, self._leaders = stream, sink, leaders
        self.tail: deque[str] = deque(maxlen=60)
        # Numbers are reused after an upgrade in place: each start forgets the last one's.
        self.started: dict[int, int] = {}  # generation -> leader pid
        self.ready: set[int] = set()
        self.ended: set[int] = set()  # exited, or could not start
        self.counts: Counter[str] = Counter()  # events seen, by name
        self.last_started = 0  # the pid of the generation started last
        self.fronts: list[tuple[int, int]] = []  # --handoff: (front pid, manager pid)
        self.lines = 0
        self.eof = False
        self.changed = threading.Condition()

    def run(self) -> None:
        for line in self._stream:
            self._take(line.rstrip("\n"))
        with self.changed:
            self.eof = True
            self.changed.notify_all()

    def _take(self, line: str) -> None:
        if self._sink is not None:
            self._sink.write(line + "\n")
        try:
            record = json.loads(line)
        except ValueError:
            record = None  # a traceback, or a line a child wrote
        with self.changed:
            self.lines += 1
            if not isinstance(record, dict) or record.get("event") != "output":
                self.tail.append(line)
            if isinstance(record, dict):
                self._note(record)
            self.changed.notify_all()

    def _note(self, record: dict[str, Any]) -> None:
        event, number = record.get("event"), record.get("generation")
        self.counts[str(event)] += 1
        if event == "started" and isinstance(number, int):
            self.started[number] = int(record["pid"])
            self._leaders.add(int(record["pid"]))
            self.last_started = int(record["pid"])
            self.ready.discard(number)
            self.ended.discard(number)
        elif event == "front" and (pids := re.findall(r"pid (\d+)", record["message"])):
            self.fronts.append((int(pids[0]), int(pids[-1])))
        elif event == "ready" and isinstance(number, int):
            self.ready.add(number)
        elif event == "exited" and isinstance(number, int):
            self.ended.add(number)
        elif event == "failed" and (found := re.search(r"generation (\d+)", record["message"])):
            self.ended.add(int(found.group(1)))

    def wait(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        """Wait until ``predicate`` (called under the lock) holds or the log ended."""
        with self.changed:
            return self.changed.wait_for(lambda: predicate() or self.eof, timeout) and predicate()

    def count(self, event: str) -> int:
        with self.changed:
            return self.counts[event]

    def wait_count(self, event: str, above: int, timeout: float = TIMEOUT) -> None:
        """Wait for the next ``event`` after ``above`` of them were seen.

        Raises:
            FaultProblem: none came within ``timeout``.
        """
        if not self.wait(lambda: self.counts[event] > above, timeout):
            raise FaultProblem(f"no {event!r} event in the manager's log within {timeout:g} s")

    def text(self) -> str:
        with self.changed:
            return "\n".join(self.tail)
