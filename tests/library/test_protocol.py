"""The lifecycle state machine, driven directly: a table of transitions."""

from __future__ import annotations

import pytest

from gapless.errors import GaplessError
from gapless.errors import IllegalTransition as SharedIllegalTransition
from gapless.library.lifecycle import (
    Action,
    AnnounceReady,
    BeginDrain,
    DeadlinePassed,
    Drained,
    Event,
    Exit,
    HandOver,
    IllegalTransition,
    KillSuccessor,
    Lifecycle,
    Ready,
    RefuseUpgrade,
    ReportFailure,
    SpawnSuccessor,
    State,
    StopRequested,
    SuccessorFailed,
    SuccessorReady,
    UpgradeRequested,
)

S = State
NOW = 100.0

# (state, event, new state, actions), drain_timeout = 30
TRANSITIONS: list[tuple[State, Event, State, list[Action]]] = [
    (S.STARTING, Ready(), S.SERVING, [AnnounceReady()]),
    (S.STARTING, StopRequested(), S.STOPPING, [BeginDrain(130.0, final=True)]),
    (
        S.STARTING,
        UpgradeRequested(),
        S.STARTING,
        [RefuseUpgrade("cannot upgrade: this process is starting")],
    ),
    (S.SERVING, UpgradeRequested(), S.UPGRADING, [SpawnSuccessor()]),
    (S.SERVING, Ready(), S.SERVING, []),
    (S.SERVING, StopRequested(), S.STOPPING, [BeginDrain(130.0, final=True)]),
    (S.UPGRADING, UpgradeRequested(), S.UPGRADING, []),
    (S.UPGRADING, SuccessorReady(42), S.DRAINING, [BeginDrain(130.0, final=False), HandOver(42)]),
    (
        S.UPGRADING,
        SuccessorFailed("exited with code 3"),
        S.SERVING,
        [ReportFailure("exited with code 3")],
    ),
    (S.UPGRADING, StopRequested(), S.STOPPING, [KillSuccessor(), BeginDrain(130.0, final=True)]),
    (
        S.DRAINING,
        UpgradeRequested(),
        S.DRAINING,
        [RefuseUpgrade("cannot upgrade: this process is draining")],
    ),
    (S.DRAINING, StopRequested(), S.STOPPING, []),
    (S.DRAINING, Drained(), S.STOPPED, [Exit(hurried=False, final=True)]),
    (S.DRAINING, DeadlinePassed(), S.STOPPED, [Exit(hurried=True, final=True)]),
    (S.STOPPING, StopRequested(), S.STOPPED, [Exit(hurried=True, final=True)]),
    (S.STOPPING, Drained(), S.STOPPED, [Exit(hurried=False, final=True)]),
    (S.STOPPING, DeadlinePassed(), S.STOPPED, [Exit(hurried=True, final=True)]),
    (S.STOPPING, SuccessorReady(7), S.STOPPING, []),
    (S.STOPPED, Drained(), S.STOPPED, []),
    # close() while a successor starts: it is cancelled (and killed), we stop.
    (S.UPGRADING, Drained(), S.STOPPED, [KillSuccessor(), Exit(hurried=False, final=True)]),
    # A server that calls ready() after close() or a hard stop: nothing to do.
    (S.STOPPED, Ready(), S.STOPPED, []),
]


@pytest.mark.parametrize(("state", "event", "new_state", "actions"), TRANSITIONS)
def test_transition_table(
    state: State, event: Event, new_state: State, actions: list[Action]
) -> None:
    machine = Lifecycle(drain_timeout=30.0, state=state)
    assert machine.handle(event, NOW) == actions
    assert machine.state is new_state


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.STARTING, SuccessorReady(1)),
        (S.SERVING, SuccessorReady(1)),
        (S.SERVING, DeadlinePassed()),
        (S.STARTING, SuccessorFailed("x")),
        (S.SERVING, SuccessorFailed("x")),
        (S.DRAINING, SuccessorReady(1)),
    ],
)
def test_illegal_transitions_raise_one_error_naming_event_and_state(
    state: State, event: Event
) -> None:
    machine = Lifecycle(state=state)
    message = rf"{type(event).__name__}\(.*\) is not allowed in state {state.value}"
    with pytest.raises(IllegalTransition, match=message) as info:
        machine.handle(event, NOW)
    assert machine.state is state
    assert info.value.where is state and info.value.event is event


def test_one_illegal_transition_type_for_the_package() -> None:
    from gapless.run.generations import IllegalTransition as RunIllegalTransition

    assert IllegalTransition is SharedIllegalTransition is RunIllegalTransition
    assert issubclass(IllegalTransition, GaplessError)
    assert issubclass(IllegalTransition, RuntimeError), "kept for code that caught RuntimeError"


def test_close_is_legal_in_every_state() -> None:
    """close() feeds Drained unless stopped: no state may refuse it (case 3 of issue 10)."""
    for state in State:
        machine = Lifecycle(state=state)
        machine.handle(Drained(), NOW)
        assert machine.state is S.STOPPED


def test_ready_is_legal_in_every_state() -> None:
    for state in State:
        Lifecycle(state=state).handle(Ready(), NOW)


def test_invariant_at_most_one_successor_starting() -> None:
    machine = Lifecycle(state=S.SERVING)
    spawned = [a for _ in range(100) for a in machine.handle(UpgradeRequested(), NOW)]
    assert spawned == [SpawnSuccessor()]


def test_invariant_stop_accepting_only_after_successor_ready() -> None:
    machine = Lifecycle(drain_timeout=30.0, state=S.SERVING)
    assert not any(isinstance(a, BeginDrain) for a in machine.handle(UpgradeRequested(), NOW))
    assert machine.state is S.UPGRADING
    actions = machine.handle(SuccessorReady(9), NOW)
    assert any(isinstance(a, BeginDrain) for a in actions)
    assert actions[0] == BeginDrain(130.0, final=False), "stop accepting before systemd hears"


def test_invariant_failed_successor_changes_nothing_and_next_upgrade_works() -> None:
    machine = Lifecycle(state=S.SERVING)
    machine.handle(UpgradeRequested(), NOW)
    machine.handle(SuccessorFailed("timeout"), NOW)
    assert machine.state is S.SERVING
    assert machine.handle(UpgradeRequested(), NOW) == [SpawnSuccessor()]


def test_invariant_unix_paths_unlinked_only_at_final_stop() -> None:
    machine = Lifecycle(state=S.UPGRADING)
    machine.handle(SuccessorReady(9), NOW)
    machine.handle(StopRequested(), NOW)
    assert machine.handle(StopRequested(), NOW) == [Exit(hurried=True, final=False)]


def test_drain_timeout_disabled_with_negative_value() -> None:
    machine = Lifecycle(drain_timeout=-1, state=S.SERVING)
    assert machine.handle(StopRequested(), NOW) == [BeginDrain(None, final=True)]


def test_second_stop_exits_at_once() -> None:
    machine = Lifecycle(state=S.SERVING)
    machine.handle(StopRequested(), NOW)
    assert machine.handle(StopRequested(), NOW) == [Exit(hurried=True, final=True)]
