"""SignalCapture and parse_signal, with real signals sent by this process or a child."""

from __future__ import annotations

import os
import queue
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import FrameType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gapless.errors import SignalsError
from gapless.proc.signals import SignalCapture, SignalDispatcher, parse_signal

TIMEOUT = 10.0
USR1, USR2 = signal.SIGUSR1, signal.SIGUSR2

# Sends SIGUSR1 to argv[1] once that process's main thread is asleep (state S in
# /proc), i.e. blocked in the wait under test. Stdin EOF says the wait is next.
KILL_WHEN_BLOCKED = f"""
import os, sys, time
pid = int(sys.argv[1])
sys.stdin.read()
deadline = time.monotonic() + {TIMEOUT}
while True:
    with open(f"/proc/{{pid}}/stat") as stat:
        state = stat.read().rsplit(")", 1)[1].split()[0]
    if state == "S":
        break
    if time.monotonic() > deadline:
        sys.exit("the parent never blocked")
os.kill(pid, {int(USR1)})
"""


class Recorder:
    """A callback that hands each signal on through a reentrant-safe queue."""

    def __init__(self) -> None:
        self.received: queue.SimpleQueue[signal.Signals] = queue.SimpleQueue()

    def __call__(self, signum: signal.Signals) -> None:
        self.received.put(signum)

    def next(self) -> signal.Signals:
        return self.received.get(timeout=TIMEOUT)


def python_handler(signum: int, frame: FrameType | None) -> None:
    """A previous handler installed with plain signal.signal."""


@pytest.fixture(autouse=True)
def _keep_usr_handlers() -> Iterator[None]:
    saved = {signum: signal.getsignal(signum) for signum in (USR1, USR2)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_callback_runs_for_a_signal_sent_to_self() -> None:
    event = threading.Event()
    received: list[signal.Signals] = []

    def callback(signum: signal.Signals) -> None:
        received.append(signum)
        event.set()

    with SignalCapture({USR1: callback}) as capture:
        assert capture.installed
        os.kill(os.getpid(), USR1)
        assert event.wait(TIMEOUT), "the callback did not run"
    assert not capture.installed
    assert received == [USR1]
    assert type(received[0]) is signal.Signals


def test_callback_runs_for_a_signal_from_a_child_process() -> None:
    event = threading.Event()
    script = "import os, sys; os.kill(int(sys.argv[1]), int(sys.argv[2]))"
    with SignalCapture({USR1: lambda signum: event.set()}):
        subprocess.run(
            [sys.executable, "-c", script, str(os.getpid()), str(int(USR1))],
            check=True,
            timeout=TIMEOUT,
        )
        assert event.wait(TIMEOUT), "the callback did not run"


def test_callback_runs_while_main_thread_is_blocked_in_event_wait() -> None:
    event = threading.Event()
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_WHEN_BLOCKED, str(os.getpid())], stdin=subprocess.PIPE
    )
    with SignalCapture({USR1: lambda signum: event.set()}):
        assert child.stdin is not None
        child.stdin.close()
        assert event.wait(TIMEOUT), "Event.wait() was not interrupted by the signal"
    assert child.wait(TIMEOUT) == 0


def test_callback_wakes_a_selector_through_a_pipe() -> None:
    read_end, write_end = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_WHEN_BLOCKED, str(os.getpid())], stdin=subprocess.PIPE
    )
    try:
        with (
            selectors.DefaultSelector() as selector,
            SignalCapture({USR1: lambda signum: os.write(write_end, b"\0")}),
        ):
            selector.register(read_end, selectors.EVENT_READ)
            assert child.stdin is not None
            child.stdin.close()
            ready = selector.select(timeout=TIMEOUT)
        assert [key.fd for key, _ in ready] == [read_end], "select() timed out"
        assert child.wait(TIMEOUT) == 0
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize(
    "previous", [signal.SIG_DFL, signal.SIG_IGN, python_handler], ids=["dfl", "ign", "python"]
)
def test_exit_restores_the_previous_handler(previous: signal.Handlers) -> None:
    signal.signal(USR1, previous)
    with SignalCapture({USR1: Recorder()}):
        assert signal.getsignal(USR1) != previous
    assert signal.getsignal(USR1) == previous


def test_exit_restores_handlers_when_the_block_raises() -> None:
    signal.signal(USR1, python_handler)
    with pytest.raises(KeyError), SignalCapture({USR1: Recorder(), USR2: Recorder()}):
        raise KeyError("boom")
    assert signal.getsignal(USR1) == python_handler
    assert signal.getsignal(USR2) == signal.SIG_DFL


def test_nested_captures_restore_in_lifo_order() -> None:
    signal.signal(USR1, python_handler)
    outer, inner = Recorder(), Recorder()
    with SignalCapture({USR1: outer, USR2: outer}):
        with SignalCapture({USR1: inner}):
            os.kill(os.getpid(), USR1)
            assert inner.next() == USR1
            os.kill(os.getpid(), USR2)
            assert outer.next() == USR2
        os.kill(os.getpid(), USR1)
        assert outer.next() == USR1
    assert inner.received.empty()
    assert signal.getsignal(USR1) == python_handler
    assert signal.getsignal(USR2) == signal.SIG_DFL


def test_installing_from_another_thread_raises() -> None:
    errors: list[BaseException] = []

    def enter() -> None:
        try:
            SignalCapture({USR1: Recorder()}).__enter__()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], SignalsError)
    assert "main thread" in str(errors[0])
    assert signal.getsignal(USR1) == signal.SIG_DFL


def test_uncatchable_signal_raises_and_installs_nothing() -> None:
    capture = SignalCapture({USR1: Recorder(), signal.SIGKILL: Recorder()})
    with pytest.raises(SignalsError, match="SIGKILL"):
        capture.__enter__()
    assert not capture.installed
    assert signal.getsignal(USR1) == signal.SIG_DFL


def test_entering_twice_raises() -> None:
    capture = SignalCapture({USR1: Recorder()})
    with capture, pytest.raises(SignalsError, match="already installed"):
        capture.__enter__()
    assert signal.getsignal(USR1) == signal.SIG_DFL


@pytest.mark.parametrize(
    ("given_name", "expected"),
    [
        ("HUP", signal.SIGHUP),
        ("SIGHUP", signal.SIGHUP),
        ("sighup", signal.SIGHUP),
        ("term", signal.SIGTERM),
        (" USR2 ", signal.SIGUSR2),
        ("1", signal.SIGHUP),
        (1, signal.SIGHUP),
        (15, signal.SIGTERM),
        ("IOT", signal.SIGABRT),
        ("RTMIN", signal.SIGRTMIN),
    ],
)
def test_parse_signal_accepts(given_name: str | int, expected: signal.Signals) -> None:
    assert parse_signal(given_name) is expected


@pytest.mark.parametrize(
    "bad", ["FOO", "", "SIG", "0", "99999", "-1", "\u017fighup", "SIG_DFL", 0, True]
)
def test_parse_signal_rejects(bad: str | int) -> None:
    with pytest.raises(SignalsError, match="unknown signal") as caught:
        parse_signal(bad)
    assert repr(bad) in str(caught.value)


def test_parse_signal_message() -> None:
    with pytest.raises(SignalsError) as caught:
        parse_signal("FOO")
    assert str(caught.value) == "unknown signal 'FOO': use a name like HUP or TERM or a number"


@pytest.mark.parametrize("signum", list(signal.Signals), ids=lambda s: s.name)
def test_parse_signal_round_trips_every_signal(signum: signal.Signals) -> None:
    for form in (signum.name, signum.name[3:].lower(), str(int(signum)), int(signum)):
        assert parse_signal(form) is signum


@given(st.one_of(st.text(), st.integers()))
def test_parse_signal_returns_a_signal_or_raises_signals_error(value: str | int) -> None:
    try:
        result = parse_signal(value)
    except SignalsError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(result, signal.Signals)


def test_dispatcher_runs_callbacks_off_the_main_thread() -> None:
    ran = threading.Event()
    threads: list[str] = []

    def callback(signum: signal.Signals) -> None:
        threads.append(threading.current_thread().name)
        ran.set()

    before = signal.getsignal(signal.SIGUSR1)
    with SignalDispatcher({signal.SIGUSR1: callback}):
        os.kill(os.getpid(), signal.SIGUSR1)
        assert ran.wait(10)
    assert threads == ["gapless-signals"]
    assert signal.getsignal(signal.SIGUSR1) is before


def test_dispatcher_survives_a_callback_that_raises(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 10, case 4: a callback's exception killed the dispatch thread, and with
    it every later TERM: the process could then only be SIGKILLed."""
    calls: queue.SimpleQueue[int] = queue.SimpleQueue()

    def callback(signum: signal.Signals) -> None:
        calls.put(signum)
        if calls.qsize() == 1:
            raise OSError(9, "Bad file descriptor")

    with SignalDispatcher({signal.SIGUSR1: callback}):
        os.kill(os.getpid(), signal.SIGUSR1)
        assert calls.get(timeout=TIMEOUT) == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGUSR1)
        assert calls.get(timeout=TIMEOUT) == signal.SIGUSR1, "the second signal is handled"
    err = capsys.readouterr().err
    assert "SIGUSR1" in err and "Traceback" in err and "Bad file descriptor" in err
