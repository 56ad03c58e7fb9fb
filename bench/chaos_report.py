"""The figures of bench/chaos.py: each request attributed to the fault in whose
window it was sent, tallied per fault kind, printed as a table and kept as JSON.

A fault's window runs from just before its injection until the manager settled
again (one generation, active). Inside it, a request counts as:

* *not serving*: sent while nothing was meant to serve, from an intended stop
  (TERM or SIGKILL to the manager) until the next manager's generation 1 was
  ready; failures there are expected and reported apart;
* *in flight at a kill*: failed, sent before a kill or stop of the process that
  held it and ended after it (nothing outside that process can save it);
* else it was sent while a generation served, and must not fail: the goal.

wrk cannot time its requests, so it runs per window, never across an intended
stop; in a window that kills the serving process, at most one failure per wrk
connection is put down to the kill.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from chaos_basics import FaultRecord

from gapless.bench.prober import Sample

NO_FAULT = "(between faults)"


@dataclass
class Tally:
    injected: int = 0
    seconds: float = 0.0
    requests: int = 0
    failed_serving: int = 0
    in_flight: int = 0
    not_serving: int = 0
    not_serving_failed: int = 0
    wrk_requests: int = 0
    wrk_failed_serving: int = 0
    wrk_in_flight: int = 0
    alive_after: int = 0
    manager_deaths: int = 0
    problems: int = 0
    fd_delta: int = 0
    rss_delta_kb: int = 0
    zombies: int = 0
    left_behind: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    # The first failures while serving: (fault index, sent at s, outcome, latency s)
    examples: list[tuple[int, float, str, float]] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return self.failed_serving + self.wrk_failed_serving


def tally(
    records: Sequence[FaultRecord],
    samples: Sequence[Sample],
    t0: float,
    wrk_connections: int,
) -> dict[str, Tally]:
    """Per kind: the requests of its windows and what the faults left."""
    tallies: dict[str, Tally] = {}
    for record in records:
        t = tallies.setdefault(record.kind, Tally())
        _count_fault(t, record, wrk_connections)
    begins = [record.begin for record in records]
    for sample in samples:
        sent = t0 + sample.start
        index = bisect.bisect_right(begins, sent) - 1
        record = records[index] if index >= 0 and sent < records[index].end else None
        kind = record.kind if record is not None else NO_FAULT
        t = tallies.setdefault(kind, Tally())
        _count_request(t, record, sample, sent)
        if t.failed_serving > len(t.examples) and len(t.examples) < 10:
            index = -1 if record is None else record.index
            t.examples.append(
                (index, round(sample.start, 3), sample.outcome, round(sample.latency, 3))
            )
    return tallies


def _count_fault(t: Tally, record: FaultRecord, wrk_connections: int) -> None:
    t.injected += 1
    t.seconds += record.end - record.begin
    died = record.manager_died is not None
    same = record.manager_after == record.manager_before or bool(record.outages)
    t.alive_after += int(not died and same)
    t.manager_deaths += int(died)
    t.problems += len(record.problems)
    if not record.image_changed and not died:
        t.fd_delta += record.fds_after - record.fds_before
        t.rss_delta_kb += record.rss_after - record.rss_before
    t.zombies += record.zombies_after
    t.left_behind += len(record.left_behind)
    t.notes.update(re.sub(r"\d+", "N", note) for note in record.notes)
    if record.wrk is not None:
        failed = int(record.wrk["socket_errors"] + record.wrk["non_2xx"])
        excused = min(failed, wrk_connections * len(record.kills))
        t.wrk_requests += int(record.wrk["requests"])
        t.wrk_in_flight += excused
        t.wrk_failed_serving += failed - excused


def _count_request(t: Tally, record: FaultRecord | None, sample: Sample, sent: float) -> None:
    t.requests += 1
    failed = sample.outcome != "ok"
    if record is not None and any(start <= sent < end for start, end in record.outages):
        t.not_serving += 1
        t.not_serving_failed += int(failed)
        return
    if not failed:
        return
    if record is not None and any(sent < hit <= sent + sample.latency for hit in record.kills):
        t.in_flight += 1
    else:
        t.failed_serving += 1
        t.outcomes[sample.outcome] += 1


def goals(tallies: dict[str, Tally], left_at_end: list[str]) -> dict[str, bool]:
    every = list(tallies.values())
    return {
        "no failed request while a generation served": all(t.failed == 0 for t in every),
        "manager alive after every fault": all(t.alive_after == t.injected for t in every),
        "every fault had the outcome expected": all(t.problems == 0 for t in every),
        "fds flat": sum(t.fd_delta for t in every) <= 0,
        "no zombie, nothing left behind": not left_at_end
        and all(t.zombies == 0 and t.left_behind == 0 for t in every),
    }


COLUMNS = (
    "Fault", "Injected", "Failed while serving (prober + wrk)", "In flight at a kill",
    "Requests (prober + wrk)", "Sent with nothing meant to serve (failed)",
    "Manager alive after", "fds Δ", "RSS Δ kB", "Unexpected outcomes",
)  # fmt: skip


def table(tallies: dict[str, Tally], order: Sequence[str]) -> str:
    """A Markdown table, one row per kind in ``order`` and a total."""
    rows = ["| " + " | ".join(COLUMNS) + " |", "|---" + "|---:" * (len(COLUMNS) - 1) + "|"]
    names = [name for name in (*order, NO_FAULT) if name in tallies]
    total = Tally()
    for name in names:
        t = tallies[name]
        rows.append(_row(f"`{name}`" if name != NO_FAULT else name, t))
        for key, value in asdict(t).items():
            if isinstance(value, (int, float)):
                setattr(total, key, getattr(total, key) + value)
    rows.append(_row("**total**", total))
    return "\n".join(rows)


def _row(name: str, t: Tally) -> str:
    no_fault = t.injected == 0
    cells = [
        name,
        "" if no_fault else f"{t.injected:,}",
        f"{t.failed_serving:,} + {t.wrk_failed_serving:,}",
        f"{t.in_flight + t.wrk_in_flight:,}",
        f"{t.requests:,} + {t.wrk_requests:,}",
        f"{t.not_serving:,} ({t.not_serving_failed:,})" if t.not_serving else "",
        "" if no_fault else f"{t.alive_after:,}/{t.injected:,}",
        "" if no_fault else f"{t.fd_delta:+d}",
        "" if no_fault else f"{t.rss_delta_kb:+,d}",
        "" if no_fault else f"{t.problems:,}",
    ]
    return "| " + " | ".join(cells) + " |"


def to_json(
    tallies: dict[str, Tally],
    records: Sequence[FaultRecord],
    t0: float,
    left_at_end: list[str],
    config: dict[str, Any],
) -> dict[str, Any]:
    kinds = {}
    for name, t in tallies.items():
        # asdict would rebuild each Counter from its (key, count) pairs, counting the pairs
        counters = {"outcomes": dict(t.outcomes), "notes": dict(t.notes)}
        kinds[name] = {**asdict(t), **counters, "failed": t.failed}
    faults = []
    for record in records:
        item = asdict(record)
        for key in ("begin", "end", "inject_at"):
            if item[key] is not None:
                item[key] = round(item[key] - t0, 3)
        item["kills"] = [round(when - t0, 3) for when in record.kills]
        item["outages"] = [[round(when - t0, 3) for when in pair] for pair in record.outages]
        faults.append(item)
    return {
        "config": config,
        "goals": goals(tallies, left_at_end),
        "kinds": kinds,
        "left_at_end": left_at_end,
        "faults": faults,
    }
