"""Scoped signal capture: handlers for the length of a ``with`` block, then
exactly the previous ones again.

A :class:`SignalCapture` installs one handler per signal on entry and puts back
what it replaced on exit, so a library can listen for ``SIGHUP`` without taking
it from its host for good. Captures nest: the innermost one receives the signal,
and leaving each ``with`` block restores what was there when it was entered.

Rules for a callback, which runs in the main thread between two bytecodes of
whatever that thread was doing (as any ``signal.signal`` handler does):

* Be quick and only hand the signal on. Signals that arrive while the main
  thread is blocked in ``threading.Event.wait()``, ``lock.acquire()`` or
  ``selectors``' ``select()`` interrupt the wait, run the callback, then the wait
  resumes (PEP 475): a callback does not make ``select()`` return by itself, so
  to wake a selector, write a byte to a pipe it watches.
* Take no lock the main thread may hold at that moment: Python's documentation
  warns that threading primitives in signal handlers can deadlock. In
  particular ``Event.set()`` deadlocks if the signal lands while the main
  thread is entering or leaving ``wait()`` on that same event (it holds the
  event's internal lock then). Safe hand-offs: ``queue.SimpleQueue.put``
  (documented reentrant), ``os.write`` to a pipe, or ``Event.set()`` on an
  event that only other threads wait on.

Example::

    >>> import os, queue, signal
    >>> received = queue.SimpleQueue()
    >>> with SignalCapture({signal.SIGUSR1: received.put}):
    ...     os.kill(os.getpid(), signal.SIGUSR1)
    ...     received.get(timeout=5)
    <Signals.SIGUSR1: 10>
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from queue import SimpleQueue
from types import FrameType, TracebackType
from typing import Any, TypeAlias

from ..errors import SignalsError

__all__ = ["SignalCapture", "SignalDispatcher", "parse_signal"]

# What signal.getsignal returns: a callable, SIG_DFL/SIG_IGN, or None for a
# handler installed outside Python (by C code before the interpreter started).
_Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

_NUMBER = re.compile(r"[0-9]{1,4}")


def parse_signal(name: str | int) -> signal.Signals:
    """Turn a signal name or number into a :class:`signal.Signals`.

    Args:
        name: ``"HUP"``, ``"SIGHUP"``, ``"sighup"``, ``"1"`` or ``1``.

    Returns:
        The signal, e.g. ``signal.SIGHUP``.

    Raises:
        SignalsError: the name or number is no signal on this system.
    """
    if isinstance(name, int) and not isinstance(name, bool):
        return _signal_by_number(name, name)
    if not isinstance(name, str):
        raise _unknown(name)
    text = name.strip()
    if _NUMBER.fullmatch(text):
        return _signal_by_number(int(text), name)
    key = text.upper()
    if not key.startswith("SIG"):
        key = "SIG" + key
    # isascii: str.upper() maps some non-ASCII letters to ASCII (U+017F to "S").
    if not text.isascii() or key not in signal.Signals.__members__:
        raise _unknown(name)
    return signal.Signals[key]


def _signal_by_number(number: int, name: object) -> signal.Signals:
    try:
        return signal.Signals(number)
    except ValueError:
        raise _unknown(name) from None


def _unknown(name: object) -> SignalsError:
    return SignalsError(f"unknown signal {name!r}: use a name like HUP or TERM or a number")


class SignalCapture:
    """Install a callback per signal while inside a ``with`` block.

    On entry the handlers in place are remembered and replaced; on exit they are
    put back, innermost capture first when captures nest. A previous handler
    that Python reports as ``None`` (installed by C code outside Python) cannot
    be reinstalled from Python: ``SIG_DFL``, the kernel's default action, is put
    in its place.

    Args:
        handlers: for each signal, a callback taking the signal; its return
            value is ignored. See the module docstring for what it may safely do.

    Raises:
        SignalsError: on construction, if a key is not a signal.
    """

    def __init__(
        self, handlers: Mapping[signal.Signals, Callable[[signal.Signals], object]]
    ) -> None:
        self._callbacks = {parse_signal(signum): callback for signum, callback in handlers.items()}
        self._previous: dict[signal.Signals, _Handler] = {}
        self._installed = False

    @property
    def installed(self) -> bool:
        """True between a successful ``__enter__`` and the matching ``__exit__``."""
        return self._installed

    def __enter__(self) -> SignalCapture:
        """Install the handlers.

        Raises:
            SignalsError: not in the main thread, already installed, or a signal
                that cannot be caught (SIGKILL, SIGSTOP); nothing stays installed.
        """
        if self._installed:
            raise SignalsError("this SignalCapture is already installed; create another to nest")
        if threading.current_thread() is not threading.main_thread():
            raise _not_main_thread()
        for signum in self._callbacks:
            try:
                self._previous[signum] = signal.signal(signum, self._dispatch)
            except (OSError, ValueError) as exc:
                self._restore()
                raise _cannot_install(signum, exc) from exc
        self._installed = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Put back the handlers that were in place on entry."""
        self._restore()
        self._installed = False

    def _dispatch(self, signum: int, frame: FrameType | None) -> None:
        received = signal.Signals(signum)
        self._callbacks[received](received)

    def _restore(self) -> None:
        while self._previous:
            signum, previous = self._previous.popitem()
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)


def _not_main_thread() -> SignalsError:
    return SignalsError(
        "signal handlers can only be installed from the main thread; create the upgrader there"
    )


def _cannot_install(signum: signal.Signals, exc: BaseException) -> SignalsError:
    if isinstance(exc, ValueError):
        # signal.signal refuses outside the main thread of the main interpreter.
        return _not_main_thread()
    return SignalsError(
        f"cannot capture {signum.name}: the kernel lets no process handle it ({exc}); "
        "capture another signal"
    )


class SignalDispatcher:
    """Runs a callback for each signal on a thread of its own.

    The handlers only put the signal in a queue (``SimpleQueue.put`` is safe
    there); the callbacks may then log, take locks and start processes, which a
    handler interrupting the main thread must not do: the main thread may hold
    the very lock it would wait for. A callback that raises has its traceback
    written to stderr; the next signals are still dispatched.

    Example::

        with SignalDispatcher({signal.SIGHUP: lambda s: reload_config()}):
            serve_forever()
    """

    def __init__(self, callbacks: Mapping[signal.Signals, Callable[[signal.Signals], object]]):
        self._callbacks = dict(callbacks)
        self._queue: SimpleQueue[signal.Signals | None] = SimpleQueue()
        self._capture = SignalCapture({signum: self._queue.put for signum in self._callbacks})

    def __enter__(self) -> SignalDispatcher:
        self._capture.__enter__()
        threading.Thread(target=self._run, name="gapless-signals", daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._capture.__exit__(None, None, None)
        self._queue.put(None)

    def _run(self) -> None:
        while (signum := self._queue.get()) is not None:
            try:
                self._callbacks[signum](signum)
            except Exception:
                # The thread must outlive one bad callback: it is the only way
                # later signals (a second TERM) are acted on at all.
                _report_failure(signum)


def _report_failure(signum: signal.Signals) -> None:
    """Write the traceback to stderr directly: logging may be what failed."""
    with contextlib.suppress(Exception):
        sys.stderr.write(
            f"gapless: the {signum.name} callback raised; still handling signals\n"
            + traceback.format_exc()
        )
        sys.stderr.flush()
