"""The figures of bench/chaos.py: each request attributed to the fault in whose
window it was sent, tallied per fault kind, printed as a table and kept as JSON.

A fault's window runs from just before its injection until the manager settled
again (one generation, active). Inside it, a request counts as:

* *not serving*: sent while nothing was meant to serve, from an intended stop
  (TERM or SIGKILL to the manager) until the next manager's generation 1 was
  ready; failures there are expected and reported apart;
* *in flight at a kill*: failed, sent before a deliberate kill or stop of what
  served and ended after it, whichever fault's it was (nothing outside that
  process can save a request it held);
* else it was sent while a generation served, and must not fail: the goal. A
  failure is charged to the fault in whose window the request was sent, unless
  it failed in a later window whose fault took the manager down: then to that.

wrk cannot time its requests, so it runs per window, never across an intended
stop of the manager; in a window that kills the serving process, at most one
failure per wrk connection and kill is put down to the kill.
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

    def window(when: float) -> FaultRecord | None:
        index = bisect.bisect_right(begins, when) - 1
        return records[index] if index >= 0 and when < records[index].end else None

    kills = sorted(hit for record in records for hit in record.kills)
    for sample in samples:
        sent = t0 + sample.start
        record = window(sent)
        t = tallies.setdefault(NO_FAULT if record is None else record.kind, Tally())
        if not _count_request(t, record, sample, sent, kills):
            continue
        # Cut short by a later fault that took the manager down: that fault's doing.
        failed_in = window(sent + sample.latency)
        if failed_in is not None and failed_in.manager_died and failed_in is not record:
            record, t = failed_in, tallies[failed_in.kind]
        t.failed_serving += 1
        t.outcomes[sample.outcome] += 1
        if len(t.examples) < 10:
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


def _count_request(
    t: Tally, record: FaultRecord | None, sample: Sample, sent: float, kills: list[float]
) -> bool:
    """Count one request; True if it failed while a generation was meant to serve."""
    t.requests += 1
    failed = sample.outcome != "ok"
    if record is not None and any(start <= sent < end for start, end in record.outages):
        t.not_serving += 1
        t.not_serving_failed += int(failed)
        return False
    if not failed:
        return False
    # Any kill counts, a later fault's too: a request the server held back (stopped
    # with SIGSTOP, say) can still be in flight when the next fault kills it.
    first_after = bisect.bisect_right(kills, sent)
    if first_after < len(kills) and kills[first_after] <= sent + sample.latency:
        t.in_flight += 1
        return False
    return True


@dataclass
class Image:
    """One manager image: from a start (or an upgrade in place) to the next; fds and
    RSS after its first fault, after a tenth of its faults (warmed up), after its last."""

    first_fault: int
    faults: int
    fds: list[int]
    rss_kb: list[int]


def longest_image(records: Sequence[FaultRecord]) -> Image | None:
    """The manager image that lived through the most faults: where growth shows."""
    images: list[tuple[int, list[FaultRecord]]] = []
    for record in records:
        if record.image_changed or record.manager_died or not images:
            images.append((record.index, []))
        images[-1][1].append(record)
    if not images:
        return None
    first, run = max(images, key=lambda image: len(image[1]))
    picked = [run[0], run[len(run) // 10], run[-1]]
    return Image(first, len(run), [r.fds_after for r in picked], [r.rss_after for r in picked])


def goals(
    tallies: dict[str, Tally], left_at_end: list[str], image: Image | None, rss_slack_kb: int
) -> dict[str, bool]:
    every = list(tallies.values())
    flat_fds = image is None or image.fds[-1] <= image.fds[0]
    flat_rss = image is None or image.rss_kb[-1] - image.rss_kb[1] <= rss_slack_kb
    return {
        "no failed request while a generation served": all(t.failed == 0 for t in every),
        "manager alive after every fault": all(t.alive_after == t.injected for t in every),
        "every fault had the outcome expected": all(t.problems == 0 for t in every),
        "fds flat": sum(t.fd_delta for t in every) <= 0 and flat_fds,
        f"RSS flat (the longest-lived manager grew {rss_slack_kb} kB at most once warm)": (
            flat_rss
        ),
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
        for key in ("begin", "end", "inject_at", "down_since"):
            if item[key] is not None:
                item[key] = round(item[key] - t0, 3)
        item["kills"] = [round(when - t0, 3) for when in record.kills]
        item["outages"] = [[round(when - t0, 3) for when in pair] for pair in record.outages]
        faults.append(item)
    image = longest_image(records)
    return {
        "config": config,
        "goals": goals(tallies, left_at_end, image, int(config.get("rss_slack_kb", 1024))),
        "longest_image": None if image is None else asdict(image),
        "kinds": kinds,
        "left_at_end": left_at_end,
        "faults": faults,
    }
