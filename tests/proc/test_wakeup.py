"""SignalWakeup: the one way a select() loop of gapless receives signals."""

from __future__ import annotations

import os
import select
import signal

import pytest

from gapless.proc.wakeup import SignalWakeup


def test_signals_wake_the_loop_and_are_taken_in_order_none_lost() -> None:
    with SignalWakeup((signal.SIGUSR1, signal.SIGUSR2)) as signals:
        assert select.select([signals], [], [], 0)[0] == []
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGUSR1):
            os.kill(os.getpid(), sig)
        assert select.select([signals], [], [], 10)[0] == [signals]
        assert signals.take() == [signal.SIGUSR1, signal.SIGUSR2, signal.SIGUSR1]
        assert select.select([signals], [], [], 0)[0] == []
        assert signals.take() == []


def test_leaving_puts_back_the_previous_handlers_and_wakeup_fd() -> None:
    handler_before = signal.getsignal(signal.SIGUSR1)
    read, write = os.pipe()
    os.set_blocking(write, False)
    wakeup_before = signal.set_wakeup_fd(write)
    try:
        with SignalWakeup((signal.SIGUSR1,)) as signals:
            assert signal.getsignal(signal.SIGUSR1) != handler_before
            fileno = signals.fileno()
        assert signal.getsignal(signal.SIGUSR1) == handler_before
        assert signal.set_wakeup_fd(-1) == write
        with pytest.raises(OSError):
            os.fstat(fileno)  # its socketpair is closed
        with pytest.raises(ValueError, match="outside its with block"):
            signals.fileno()
    finally:
        signal.set_wakeup_fd(wakeup_before)
        os.close(read)
        os.close(write)


def test_a_forked_child_closes_the_parents_sockets_and_the_parent_keeps_them() -> None:
    with SignalWakeup((signal.SIGUSR1,)) as signals:
        fileno = signals.fileno()
        pid = os.fork()
        if pid == 0:  # the child: its copy of the sockets must go
            signals.close_in_forked_child()
            try:
                os.fstat(fileno)
            except OSError:
                os._exit(0)
            os._exit(1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        os.kill(os.getpid(), signal.SIGUSR1)
        assert select.select([signals], [], [], 10)[0] == [signals]
        assert signals.take() == [signal.SIGUSR1]
