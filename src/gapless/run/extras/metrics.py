"""Prometheus metrics of the manager, served as ``/metrics`` on ``--health-bind``.

Fed by the manager's own lifecycle events: :class:`Metrics` subscribes to the
:class:`~gapless.run.eventlog.EventLog` as the waiting control clients do, and
each ``started``, ``ready``, ``failed``, ``draining``, ``exited`` or ``killed``
event moves a counter or a histogram. Nothing is counted per request and nothing
runs on a timer or a thread: the text is rendered when a scraper asks for it.

What the events do not say, the metrics do not pretend to know: a drain is
timed from the stop signal to the leader's exit (or to the kill at the drain
deadline); workers a leader leaves behind are not waited for in the figure.
Connections are what the manager reads from /proc at the drain's start and at
the kill (gapless.sockets.connections), not what the server closed in between.

The counters cross an exec in place (``gapless upgrade``, a recovery) with the
health socket (:meth:`Metrics.export`, :meth:`Metrics.restore`); a ``--handoff``
successor is a new process and starts its own from zero.

Example::

    metrics = Metrics(started_at=time.time(), upgrades=0, recoveries=0)
    log.subscribe(metrics)
    metrics.exposition("serving")   # "# HELP gapless_generation ..."
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..._version import __version__

__all__ = ["CONTENT_TYPE", "DRAIN_BUCKETS", "READY_BUCKETS", "Histogram", "Metrics"]

#: The Content-Type of the text exposition format 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Upper bounds (seconds) of the reload -> ready histogram: interpreter start is ~0.1 s.
READY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Upper bounds (seconds) of the drain histogram: keep-alive idles to long requests.
DRAIN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Histogram:
    """Cumulative buckets, a sum and a count, as Prometheus exposes them."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.cumulative = [0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.cumulative[index] += 1
        self.sum += value
        self.count += 1

    def export(self) -> dict[str, Any]:
        return {"cumulative": self.cumulative, "sum": self.sum, "count": self.count}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take the counts :meth:`export` gave, if the bounds are still the same."""
        if len(state["cumulative"]) == len(self.bounds):
            self.cumulative = [int(count) for count in state["cumulative"]]
            self.sum, self.count = float(state["sum"]), int(state["count"])

    def samples(self, name: str) -> list[str]:
        lines = [
            f'{name}_bucket{{le="{_number(bound)}"}} {count}'
            for bound, count in zip(self.bounds, self.cumulative, strict=True)
        ]
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {_number(round(self.sum, 6))}")  # no float noise
        lines.append(f"{name}_count {self.count}")
        return lines


class Metrics:
    """The manager's counters, fed as an event log subscriber.

    Args:
        started_at: when the manager process started (unix seconds).
        upgrades: in-place upgrades (``gapless upgrade``) this process went through.
        recoveries: re-executions in place to recover from a bug in the manager.
        clock: the wall clock (unix seconds), for the generations' start times.
    """

    def __init__(
        self,
        started_at: float,
        upgrades: int,
        recoveries: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.started_at = started_at
        self.upgrades = upgrades
        self.recoveries = recoveries
        self._clock = clock
        self.generation = 0  # the active one; 0 before the first is ready
        self.generation_started: float | None = None
        self.reloads = {"ok": 0, "failed": 0}
        self.ready_seconds = Histogram(READY_BUCKETS)
        self.drain_seconds = Histogram(DRAIN_BUCKETS)
        self.drain_connections = 0
        self.drain_kills = 0
        self.force_closed = 0
        self._spawned: dict[int, float] = {}  # generation -> unix start time
        self._draining: dict[int, float] = {}  # generation -> monotonic drain start

    # Across an exec in place (gapless upgrade, a recovery) ----------------------

    def export(self) -> dict[str, Any]:
        """The counters as JSON values, for :meth:`restore` in the exec'd manager."""
        return {
            "generation": self.generation,
            "generation_started": self.generation_started,
            "reloads": self.reloads,
            "ready_seconds": self.ready_seconds.export(),
            "drain_seconds": self.drain_seconds.export(),
            "drain": [self.drain_connections, self.drain_kills, self.force_closed],
            "spawned": list(self._spawned.items()),
            "draining": list(self._draining.items()),  # CLOCK_MONOTONIC: the same after it
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Carry on counting from ``state`` (see :meth:`export`)."""
        self.generation = int(state["generation"])
        self.generation_started = state["generation_started"]
        self.reloads = {str(outcome): int(count) for outcome, count in state["reloads"].items()}
        self.ready_seconds.restore(state["ready_seconds"])
        self.drain_seconds.restore(state["drain_seconds"])
        self.drain_connections, self.drain_kills, self.force_closed = state["drain"]
        self._spawned = {int(gen): float(when) for gen, when in state["spawned"]}
        self._draining = {int(gen): float(when) for gen, when in state["draining"]}

    # The event log's subscriber interface -------------------------------------

    def send(self, message: Mapping[str, Any]) -> bool:
        """Take one event (see EventLog.event); True: stay subscribed."""
        handler = _HANDLERS.get(message.get("event", ""))
        generation = message.get("generation")
        if handler is not None and (generation is None or isinstance(generation, int)):
            handler(self, generation, message)
        return True

    def _started(self, generation: int | None, message: Mapping[str, Any]) -> None:
        if generation is not None:
            self._spawned[generation] = self._clock()

    def _ready(self, generation: int | None, message: Mapping[str, Any]) -> None:
        if generation is None:
            return
        latency = float(message.get("latency_ms", 0.0)) / 1000
        self.generation = generation
        self.generation_started = self._spawned.pop(generation, self._clock() - latency)
        if generation > 1:  # generation 1 is the manager's start, not a reload
            self.reloads["ok"] += 1
            self.ready_seconds.observe(latency)

    def _failed(self, generation: int | None, message: Mapping[str, Any]) -> None:
        if "generation" not in message:
            return  # not a start's failure (an exec in place that could not be done)
        if generation is not None:
            self._spawned.pop(generation, None)
        if generation != 1:  # None: a reload refused because the manager stops
            self.reloads["failed"] += 1

    def _drain_began(self, generation: int | None, message: Mapping[str, Any]) -> None:
        if generation is not None:
            self._draining[generation] = time.monotonic()
            self.drain_connections += int(message.get("connections", 0))

    def _exited(self, generation: int | None, message: Mapping[str, Any]) -> None:
        began = self._draining.pop(generation, None) if generation is not None else None
        if began is not None:
            self.drain_seconds.observe(time.monotonic() - began)

    def _killed(self, generation: int | None, message: Mapping[str, Any]) -> None:
        if generation is None:
            return
        self._spawned.pop(generation, None)
        if generation in self._draining:
            self.drain_kills += 1
            self.force_closed += int(message.get("connections", 0))
            self._exited(generation, message)

    # The exposition -----------------------------------------------------------

    def exposition(self, state: str) -> str:
        """The text format 0.0.4; ``state`` is the health endpoint's (serving: ready)."""
        lines: list[str] = []
        for name, kind, help, samples in self._families(state):
            lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(lines) + "\n"

    def _families(self, state: str) -> list[tuple[str, str, str, list[str]]]:
        started = self.generation_started
        return [
            _one("gapless_info", "gauge", "gapless's version, as a label", 1,
                 f'version="{__version__}"'),
            _one("gapless_manager_start_time_seconds", "gauge",
                 "when the manager process started, unix seconds", self.started_at),
            _one("gapless_manager_upgrades_total", "counter",
                 "in-place upgrades of the manager (gapless upgrade) this process went through",
                 self.upgrades),
            _one("gapless_manager_recoveries_total", "counter",
                 "re-executions in place to recover from a bug in the manager", self.recoveries),
            _one("gapless_ready", "gauge",
                 "1 while a generation serves and no stop was asked for (what /ready answers 200)",
                 int(state == "serving")),
            _one("gapless_generation", "gauge",
                 "the active generation's number; 0 before the first is ready", self.generation),
            _one("gapless_generation_start_time_seconds", "gauge",
                 "when the active generation was started, unix seconds; 0 before the first",
                 0 if started is None else started),
            ("gapless_reloads_total", "counter",
             "reloads by outcome: ok (the new generation got ready) or failed",
             [f'gapless_reloads_total{{outcome="{outcome}"}} {count}'
              for outcome, count in self.reloads.items()]),
            ("gapless_reload_ready_seconds", "histogram",
             "seconds from a reload's spawn to its generation's readiness (reloads that got ready)",
             self.ready_seconds.samples("gapless_reload_ready_seconds")),
            ("gapless_drain_seconds", "histogram",
             "seconds from a generation's stop signal to its leader's exit or its kill",
             self.drain_seconds.samples("gapless_drain_seconds")),
            _one("gapless_drain_connections_total", "counter",
                 "client connections the draining generations held when their drain began",
                 self.drain_connections),
            _one("gapless_drain_kills_total", "counter",
                 "draining generations killed before they exited (drain deadline or hurried stop)",
                 self.drain_kills),
            _one("gapless_drain_force_closed_connections_total", "counter",
                 "client connections the killed draining generations still held at the kill",
                 self.force_closed),
        ]  # fmt: skip


_HANDLERS: dict[str, Callable[[Metrics, int | None, Mapping[str, Any]], None]] = {
    "started": Metrics._started,
    "ready": Metrics._ready,
    "failed": Metrics._failed,
    "draining": Metrics._drain_began,
    "exited": Metrics._exited,
    "killed": Metrics._killed,
}


def _one(
    name: str, kind: str, help: str, value: float, labels: str = ""
) -> tuple[str, str, str, list[str]]:
    """A family of one sample."""
    selector = f"{{{labels}}}" if labels else ""
    return name, kind, help, [f"{name}{selector} {_number(value)}"]


def _number(value: float) -> str:
    """As Prometheus writes numbers: integers without a point, floats in full."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(value)
