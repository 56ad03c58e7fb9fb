"""The transition table of the generations' machine (gapless.run.generations):
what each event does in each state, as small functions of the machine.

Kept apart from :class:`~gapless.run.generations.Generations` so that the table
reads as one page; the rules it keeps are listed there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .events import (
    Action,
    Activated,
    Boot,
    ChildExited,
    ChildReady,
    DrainDeadline,
    Event,
    GroupExited,
    KillGroup,
    ReadyTimeout,
    ReloadRequested,
    ReloadResult,
    ReportReload,
    SpawnFailed,
    StartRejected,
    StopNow,
    StopRequested,
)
from .records import CRASH_LIMIT, CRASH_WINDOW, Generation, GenState, IllegalTransition, Phase

if TYPE_CHECKING:
    from .generations import Generations

__all__ = ["GENERATION_TABLE", "MANAGER_TABLE"]

_ManagerHandler = Callable[["Generations", Event, float], list[Action]]
_GenHandler = Callable[["Generations", Generation, Event, float], list[Action]]


def _boot(m: Generations, e: Event, now: float) -> list[Action]:
    if m.generations:
        return []  # booted already
    return [m._spawn(now, ())]


def _reload(m: Generations, e: Event, now: float) -> list[Action]:
    assert isinstance(e, ReloadRequested)
    request = () if e.request is None else (e.request,)
    if m.starting is not None:
        m.queued = (m.queued or ()) + request
        return []
    return [m._spawn(now, request)]


def _refuse_reload(m: Generations, e: Event, now: float) -> list[Action]:
    assert isinstance(e, ReloadRequested)
    request = () if e.request is None else (e.request,)
    result = ReloadResult(None, False, "the manager is stopping", request, now)
    return [ReportReload(result)]


def _stop(m: Generations, e: Event, now: float) -> list[Action]:
    return m._begin_stop(now, exit_code=0)


def _stop_now(m: Generations, e: Event, now: float) -> list[Action]:
    actions = m._begin_stop(now, m.exit_code) if m.phase is Phase.RUNNING else []
    for gen in m.in_state(GenState.DRAINING):
        gen.state = GenState.KILLED
        actions.append(KillGroup(gen.number, "stop hurried by a second request"))
    return actions


def _ready(m: Generations, gen: Generation, e: Event, now: float) -> list[Action]:
    gen.ready_at = now
    actions: list[Action] = []
    previous = m.active
    gen.state = GenState.ACTIVE
    actions.append(Activated(gen.number, now - gen.started))
    if previous is not None:
        actions.append(m._drain(previous, now))
    latency_ms = (now - gen.started) * 1000
    actions.append(
        m._report(gen, True, f"generation {gen.number} ready after {latency_ms:.0f} ms", now)
    )
    return actions


def _ignore(m: Generations, gen: Generation, e: Event, now: float) -> list[Action]:
    return []


def _spawn_failed(m: Generations, gen: Generation, e: Event, now: float) -> list[Action]:
    assert isinstance(e, SpawnFailed)
    gen.state = GenState.EXITED
    return [m._report(gen, False, e.reason, now)]


def _start_exited(m: Generations, gen: Generation, e: Event, now: float) -> list[Action]:
    assert isinstance(e, ChildExited)
    report = m._fail(gen, f"{e.status.describe()} before it was ready", now)
    return [report, *_exited(m, gen, e, now)]


def _active_exited(m: Generations, gen: Generation, e: Event, now: float) -> list[Action]:
    # The server died on its own. The sockets are still held, so start a
    # replacement at once; if that one fails too, _settle gives up.
    assert isinstance(e, ChildExited)
    actions = _exited(m, gen, e, now)
    m._crashes = [when for when in m._crashes if now - when < CRASH_WINDOW] + [now]
    if len(m._crashes) > CRASH_LIMIT:
        # A crash loop (e.g. a deploy that dies right after READY=1): _settle stops.
        why = f"{len(m._crashes)} crashes within {CRASH_WINDOW:g} s; giving up"
        return [*actions, m._fail(gen, f"{e.status.describe()} while active: {why}", now)]
    if m.phase is Phase.RUNNING and m.starting is None:
        requests, m.queued = m.queued or (), None
        actions.append(m._spawn(now, requests))
    return actions


def _exited(m: Generations, gen: Generation, e: Event, now: float) -> list[Action]:
    """The leader is gone; a group left behind is killed unless it may still drain."""
    assert isinstance(e, ChildExited)
    gen.exit_status = e.status
    if not e.lingering:
        gen.state = GenState.EXITED
        return []
    if gen.state is GenState.DRAINING:
        return []  # its workers finish their requests, by the same deadline
    gen.state = GenState.KILLED
    return [KillGroup(gen.number, f"its leader {e.status.describe()}, leaving processes behind")]


def _group_exited(m: Generations, gen: Generation, e: Event, now: float) -> list[Action]:
    if gen.exit_status is None:
        raise IllegalTransition(f"generation {gen.number}'s leader still runs", e)
    gen.state = GenState.EXITED
    return []


def _ready_timeout(m: Generations, gen: Generation, e: Event, now: float) -> list[Action]:
    gen.state = GenState.KILLED
    return [
        KillGroup(gen.number, f"not ready within {m.ready_timeout:g} s"),
        m._fail(gen, f"was not ready within {m.ready_timeout:g} s; killed", now),
    ]


def _rejected(m: Generations, gen: Generation, e: Event, now: float) -> list[Action]:
    assert isinstance(e, StartRejected)
    gen.state = GenState.KILLED
    why = "it does not serve on the sockets it was given"
    return [KillGroup(gen.number, why), m._fail(gen, f"{e.reason}; killed", now)]


def _drain_deadline(m: Generations, gen: Generation, e: Event, now: float) -> list[Action]:
    gen.state = GenState.KILLED
    return [KillGroup(gen.number, f"still running {m.drain_timeout:g} s after the drain began")]


P, G = Phase, GenState
MANAGER_TABLE: dict[tuple[Phase, type], _ManagerHandler] = {
    (P.RUNNING, Boot): _boot,
    (P.RUNNING, ReloadRequested): _reload,
    (P.RUNNING, StopRequested): _stop,
    (P.RUNNING, StopNow): _stop_now,
    (P.STOPPING, ReloadRequested): _refuse_reload,
    (P.STOPPING, StopRequested): _stop_now,  # the second TERM or INT hurries
    (P.STOPPING, StopNow): _stop_now,
}
GENERATION_TABLE: dict[tuple[GenState, type], _GenHandler] = {
    (G.STARTING, ChildReady): _ready,
    (G.STARTING, SpawnFailed): _spawn_failed,
    (G.STARTING, ChildExited): _start_exited,
    (G.STARTING, ReadyTimeout): _ready_timeout,
    (G.STARTING, StartRejected): _rejected,
    (G.ACTIVE, ChildReady): _ignore,  # READY=1 again after the server's own reload
    (G.ACTIVE, ChildExited): _active_exited,
    (G.DRAINING, ChildReady): _ignore,
    (G.DRAINING, ChildExited): _exited,
    (G.DRAINING, GroupExited): _group_exited,
    (G.DRAINING, DrainDeadline): _drain_deadline,
    (G.KILLED, ChildReady): _ignore,
    (G.KILLED, ChildExited): _exited,
    (G.KILLED, GroupExited): _group_exited,
    (G.EXITED, ChildReady): _ignore,  # a late datagram from a dying process
}
