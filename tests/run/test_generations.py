"""The manager's state machine, driven directly: a transition table, then each
invariant by name, then random event sequences that must keep every invariant."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gapless.proc.spawn import ExitStatus
from gapless.run.generations import (
    LIVE,
    Action,
    Activated,
    Boot,
    ChildExited,
    ChildReady,
    DrainDeadline,
    Event,
    Exit,
    Generations,
    GenState,
    GroupExited,
    IllegalTransition,
    KillGroup,
    Phase,
    ReadyTimeout,
    ReloadRequested,
    ReloadResult,
    ReportReload,
    Signal,
    Spawn,
    SpawnFailed,
    StopNow,
    StopRequested,
)

G = GenState
NOW = 100.0
TERM = 15
READY_TIMEOUT = 10.0
DRAIN_TIMEOUT = 30.0


def machine(*events: Event) -> Generations:
    """A machine after ``events``, fed one second apart from t=0."""
    m = Generations(READY_TIMEOUT, DRAIN_TIMEOUT, TERM)
    for t, event in enumerate(events):
        m.handle(event, float(t))
    return m


def states(m: Generations) -> dict[int, GenState]:
    return {number: gen.state for number, gen in m.generations.items()}


def failed(gen: int | None, reason: str, requests: tuple[int, ...] = ()) -> ReportReload:
    return ReportReload(ReloadResult(gen, False, reason, requests, NOW))


BOOTED = (Boot(),)
SERVING = (Boot(), ChildReady(1))  # generation 1 ready at t=1
RELOADING = (*SERVING, ReloadRequested(7))  # generation 2 spawned at t=2
QUEUED = (*RELOADING, ReloadRequested(8))
DRAINING = (*RELOADING, ChildReady(2))  # generation 1 draining since t=3
STOPPING = (*SERVING, StopRequested())  # generation 1 draining since t=2

# (setup, event, actions, generation states after, phase after)
TABLE: list[tuple[Sequence[Event], Event, list[Action], dict[int, GenState], Phase]] = [
    ((), Boot(), [Spawn(1)], {1: G.STARTING}, Phase.RUNNING),
    (
        BOOTED,
        ChildReady(1),
        [
            Activated(1, NOW),
            ReportReload(ReloadResult(1, True, "generation 1 ready after 100000 ms", (), NOW)),
        ],
        {1: G.ACTIVE},
        Phase.RUNNING,
    ),
    (SERVING, ReloadRequested(7), [Spawn(2)], {1: G.ACTIVE, 2: G.STARTING}, Phase.RUNNING),
    (RELOADING, ReloadRequested(8), [], {1: G.ACTIVE, 2: G.STARTING}, Phase.RUNNING),
    (
        RELOADING,
        ChildReady(2),
        [
            Activated(2, NOW - 2),
            Signal(1, TERM, NOW + DRAIN_TIMEOUT),
            ReportReload(ReloadResult(2, True, "generation 2 ready after 98000 ms", (7,), NOW)),
        ],
        {1: G.DRAINING, 2: G.ACTIVE},
        Phase.RUNNING,
    ),
    (
        QUEUED,
        ChildReady(2),
        [
            Activated(2, NOW - 2),
            Signal(1, TERM, NOW + DRAIN_TIMEOUT),
            ReportReload(ReloadResult(2, True, "generation 2 ready after 98000 ms", (7,), NOW)),
            Spawn(3),
        ],
        {1: G.DRAINING, 2: G.ACTIVE, 3: G.STARTING},
        Phase.RUNNING,
    ),
    (
        RELOADING,
        ChildExited(2, ExitStatus(3)),
        [failed(2, "generation 2 exited with code 3 before it was ready", (7,))],
        {1: G.ACTIVE, 2: G.EXITED},
        Phase.RUNNING,
    ),
    (
        QUEUED,
        ChildExited(2, ExitStatus(3)),
        [failed(2, "generation 2 exited with code 3 before it was ready", (7,)), Spawn(3)],
        {1: G.ACTIVE, 2: G.EXITED, 3: G.STARTING},
        Phase.RUNNING,
    ),
    (
        RELOADING,
        ChildExited(2, ExitStatus(3), lingering=True),
        [
            failed(2, "generation 2 exited with code 3 before it was ready", (7,)),
            KillGroup(2, "its leader exited with code 3, leaving processes behind"),
        ],
        {1: G.ACTIVE, 2: G.KILLED},
        Phase.RUNNING,
    ),
    (
        RELOADING,
        SpawnFailed(2, "generation 2 could not start: command not found"),
        [failed(2, "generation 2 could not start: command not found", (7,))],
        {1: G.ACTIVE, 2: G.EXITED},
        Phase.RUNNING,
    ),
    (
        RELOADING,
        ReadyTimeout(2),
        [
            KillGroup(2, "not ready within 10 s"),
            failed(2, "generation 2 was not ready within 10 s; killed", (7,)),
        ],
        {1: G.ACTIVE, 2: G.KILLED},
        Phase.RUNNING,
    ),
    (
        (*RELOADING, ReadyTimeout(2)),
        ChildExited(2, ExitStatus(-9)),
        [],
        {1: G.ACTIVE, 2: G.EXITED},
        Phase.RUNNING,
    ),
    (
        DRAINING,
        DrainDeadline(1),
        [KillGroup(1, "still running 30 s after the drain began")],
        {1: G.KILLED, 2: G.ACTIVE},
        Phase.RUNNING,
    ),
    (DRAINING, ChildExited(1, ExitStatus(0)), [], {1: G.EXITED, 2: G.ACTIVE}, Phase.RUNNING),
    (
        DRAINING,
        ChildExited(1, ExitStatus(0), lingering=True),
        [],
        {1: G.DRAINING, 2: G.ACTIVE},
        Phase.RUNNING,
    ),
    (
        (*DRAINING, ChildExited(1, ExitStatus(0), lingering=True)),
        GroupExited(1),
        [],
        {1: G.EXITED, 2: G.ACTIVE},
        Phase.RUNNING,
    ),
    (DRAINING, ChildReady(1), [], {1: G.DRAINING, 2: G.ACTIVE}, Phase.RUNNING),
    (SERVING, ChildReady(1), [], {1: G.ACTIVE}, Phase.RUNNING),
    (
        SERVING,
        ChildExited(1, ExitStatus(-9)),
        [Spawn(2)],
        {1: G.EXITED, 2: G.STARTING},
        Phase.RUNNING,
    ),
    (
        BOOTED,
        ChildExited(1, ExitStatus(3)),
        [failed(1, "generation 1 exited with code 3 before it was ready"), Exit(1)],
        {1: G.EXITED},
        Phase.STOPPED,
    ),
    (
        SERVING,
        StopRequested(),
        [Signal(1, TERM, NOW + DRAIN_TIMEOUT)],
        {1: G.DRAINING},
        Phase.STOPPING,
    ),
    (
        QUEUED,
        StopRequested(),
        [
            failed(None, "the manager is stopping", (8,)),
            failed(2, "generation 2 was cancelled: the manager is stopping", (7,)),
            Signal(1, TERM, NOW + DRAIN_TIMEOUT),
            Signal(2, TERM, NOW + DRAIN_TIMEOUT),
        ],
        {1: G.DRAINING, 2: G.DRAINING},
        Phase.STOPPING,
    ),
    (
        STOPPING,
        StopRequested(),
        [KillGroup(1, "stop hurried by a second request")],
        {1: G.KILLED},
        Phase.STOPPING,
    ),
    (
        STOPPING,
        ReloadRequested(9),
        [failed(None, "the manager is stopping", (9,))],
        {1: G.DRAINING},
        Phase.STOPPING,
    ),
    (STOPPING, ChildExited(1, ExitStatus(0)), [Exit(0)], {1: G.EXITED}, Phase.STOPPED),
    (
        SERVING,
        StopNow(),
        [Signal(1, TERM, NOW + DRAIN_TIMEOUT), KillGroup(1, "stop hurried by a second request")],
        {1: G.KILLED},
        Phase.STOPPING,
    ),
]


@pytest.mark.parametrize(("setup", "event", "actions", "after", "phase"), TABLE)
def test_transition_table(
    setup: Sequence[Event],
    event: Event,
    actions: list[Action],
    after: dict[int, GenState],
    phase: Phase,
) -> None:
    m = machine(*setup)
    assert m.handle(event, NOW) == actions
    assert states(m) == after
    assert m.phase is phase


@pytest.mark.parametrize(
    ("setup", "event"),
    [
        (SERVING, ChildReady(5)),  # no such generation
        (SERVING, GroupExited(1)),  # its leader still runs
        (SERVING, DrainDeadline(1)),  # it is not draining
        (DRAINING, GroupExited(1)),  # its leader has not exited
        (RELOADING, SpawnFailed(1, "x")),  # it started long ago
        ((*STOPPING, ChildExited(1, ExitStatus(0))), StopRequested()),  # stopped
    ],
)
def test_an_impossible_event_is_an_illegal_transition(setup: Sequence[Event], event: Event) -> None:
    m = machine(*setup)
    with pytest.raises(IllegalTransition, match=type(event).__name__):
        m.handle(event, NOW)


def test_invariant_at_most_one_generation_is_starting() -> None:
    m = machine(*RELOADING)
    for request in range(10, 20):
        assert m.handle(ReloadRequested(request), NOW) == []
    assert len(m.in_state(G.STARTING)) == 1
    assert m.queued == tuple(range(10, 20))


def test_invariant_a_storm_of_100_reload_requests_starts_at_most_two_generations() -> None:
    m = machine(*SERVING)
    actions: list[Action] = []
    for request in range(100):
        actions += m.handle(ReloadRequested(request), NOW)
    actions += m.handle(ChildReady(2), NOW + 1)
    actions += m.handle(ChildReady(3), NOW + 2)
    assert [a for a in actions if isinstance(a, Spawn)] == [Spawn(2), Spawn(3)]
    answered = [r for a in actions if isinstance(a, ReportReload) for r in a.result.requests]
    assert sorted(answered) == list(range(100))  # every request answered once
    assert not m.reloading


def test_invariant_a_generation_becomes_active_only_on_a_readiness_event() -> None:
    m = machine(*RELOADING)
    for event in m.timers():  # only the ready timeout: never "ready" on a timer
        assert event[1] == ReadyTimeout(2)
    m.handle(ReadyTimeout(2), NOW)
    assert m.active is not None and m.active.number == 1


def test_invariant_the_old_generation_drains_only_after_the_new_one_is_ready() -> None:
    m = machine(*RELOADING)
    assert m.generations[1].state is G.ACTIVE
    actions = m.handle(ChildReady(2), NOW)
    assert actions.index(Activated(2, NOW - 2)) < actions.index(
        Signal(1, TERM, NOW + DRAIN_TIMEOUT)
    )


def test_invariant_a_failed_start_changes_nothing_for_clients() -> None:
    for failure in (ChildExited(2, ExitStatus(3)), ReadyTimeout(2), SpawnFailed(2, "nope")):
        m = machine(*RELOADING)
        actions = m.handle(failure, NOW)
        assert m.active is not None and m.active.number == 1
        assert not [a for a in actions if isinstance(a, Signal) and a.generation == 1]
        assert m.last_reload is not None and not m.last_reload.ok


def test_invariant_each_draining_generation_has_its_own_deadline() -> None:
    m = machine(*DRAINING, ReloadRequested(9), ChildReady(3))  # 1 since t=3, 2 since t=5
    assert states(m) == {1: G.DRAINING, 2: G.DRAINING, 3: G.ACTIVE}
    assert m.timers() == [
        (3 + DRAIN_TIMEOUT, DrainDeadline(1)),
        (5 + DRAIN_TIMEOUT, DrainDeadline(2)),
    ]
    m.handle(DrainDeadline(1), 3 + DRAIN_TIMEOUT)
    assert states(m) == {1: G.KILLED, 2: G.DRAINING, 3: G.ACTIVE}


def test_invariant_stop_drains_every_generation_then_exits_0() -> None:
    m = machine(*DRAINING)
    m.handle(StopRequested(), NOW)
    assert states(m) == {1: G.DRAINING, 2: G.DRAINING}
    assert m.handle(ChildExited(1, ExitStatus(0)), NOW) == []
    assert m.handle(ChildExited(2, ExitStatus(0)), NOW) == [Exit(0)]


def test_invariant_exited_generations_are_forgotten_after_eight() -> None:
    m = machine(*SERVING)
    for number in range(2, 20):
        m.handle(ReloadRequested(), NOW)
        m.handle(ChildReady(number), NOW)
        m.handle(ChildExited(number - 1, ExitStatus(0)), NOW)
    assert len(m.in_state(G.EXITED)) == 8
    assert len(m.generations) == 9


# Random sequences: any legal event, in any order, keeps the invariants.

Move = st.integers(min_value=0, max_value=7)


def legal_event(m: Generations, move: int, pick: int) -> Event | None:
    """Turn a random move into an event that may happen now, or None."""
    live = m.in_state(*LIVE)
    gen = live[pick % len(live)] if live else None
    if move == 0:
        return ReloadRequested(pick)
    if move == 1:
        return StopRequested()
    if gen is None:
        return None
    if move == 2 and gen.state is G.STARTING:
        return ChildReady(gen.number)
    if move == 3 and gen.state is G.STARTING:
        return ReadyTimeout(gen.number)
    if move == 4 and gen.state is G.DRAINING:
        return DrainDeadline(gen.number)
    if move in (5, 6) and gen.exit_status is None:
        return ChildExited(gen.number, ExitStatus(pick % 3), lingering=move == 6)
    if move == 7 and gen.exit_status is not None:
        return GroupExited(gen.number)
    return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(Move, st.integers(0, 50)), max_size=60))
def test_random_event_sequences_keep_every_invariant(moves: list[tuple[int, int]]) -> None:
    m = machine(Boot())
    spawned = 1
    for now, (move, pick) in enumerate(moves, start=1):
        if m.phase is Phase.STOPPED:
            break
        event = legal_event(m, move, pick)
        if event is None:
            continue
        actions = m.handle(event, float(now))
        spawned += sum(isinstance(a, Spawn) for a in actions)
        assert len(m.in_state(G.STARTING)) <= 1
        assert len(m.in_state(G.ACTIVE)) <= 1
        if any(isinstance(a, Activated) for a in actions):
            assert isinstance(event, ChildReady)
        if m.phase is Phase.STOPPING:
            assert not m.in_state(G.STARTING, G.ACTIVE)
        for gen in m.in_state(G.DRAINING):
            assert gen.drain_deadline is not None
    assert spawned >= len(m.generations)
