"""Hostile datagrams to a live manager's NOTIFY_SOCKET, and READY=1 from outside.

The socket is a path in the user's 0700 directory, so any process of the same
user (or root) may send to it. Malformed, oversized, binary and truncated
datagrams, fds passed along, and well-formed ones from a process outside every
generation: each is dropped and counted in the log (the first of each second
in full, the rest in one line a second with their number), and ``gapless
status`` stays the same while a prober sees no failure. The parser itself is
fuzzed in tests/systemd/test_notify.py; this is the manager's side.
"""

from __future__ import annotations

import array
import os
import signal
import socket
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from manager_harness import Manager, Prober, app, running, write_command

from gapless.systemd.notify import MAX_MESSAGE

NOTIFY = ("--ready", "notify")
IGNORED = r"ignored (?:a notify datagram|(\d+) more notify datagrams? in the last)"

fields = st.sampled_from(
    [b"READY=1", b"STATUS=up", b"MAINPID=1", b"RELOADING=1", b"STOPPING=1", b"READY=0",
     b"MONOTONIC_USEC=x", b"EXTEND_TIMEOUT_USEC=-1", b"BARRIER=1", b"WATCHDOG=1", b"=",
     b"READY", b"ready=1", b"STATUS=\xc3", b"\xff\xfe", b"READY=1\0", b"", b" READY=1"]
)  # fmt: skip
datagrams = st.one_of(
    st.binary(min_size=1, max_size=MAX_MESSAGE + 64),
    st.lists(fields, min_size=1, max_size=8).map(b"\n".join),
    st.lists(fields, min_size=1, max_size=4).map(lambda parts: b"\n".join(parts)[:-1]),
)


def notify_address(pid: int) -> bytes:
    """The NOTIFY_SOCKET a child was given, in the kernel's form (a leading NUL)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    value = next(item for item in environ if item.startswith(b"NOTIFY_SOCKET="))
    address = value.partition(b"=")[2]
    return b"\0" + address[1:] if address.startswith(b"@") else address


def stable(status: dict[str, Any]) -> dict[str, Any]:
    """The status without what changes by itself with time."""
    manager = {k: v for k, v in status["manager"].items() if k != "uptime"}
    generations = [{k: v for k, v in g.items() if k != "age"} for g in status["generations"]]
    last = status["last_reload"] and {k: v for k, v in status["last_reload"].items() if k != "ago"}
    return {**status, "manager": manager, "generations": generations, "last_reload": last}


def holds(pid: int, sock: socket.socket) -> bool:
    """Whether process ``pid`` has an fd for ``sock``."""
    target = f"socket:[{os.fstat(sock.fileno()).st_ino}]"
    directory = f"/proc/{pid}/fd"
    return any(os.readlink(f"{directory}/{fd}") == target for fd in os.listdir(directory))


def test_hostile_datagrams_are_dropped_with_a_log_line_and_change_nothing(
    tmp_path: Path,
) -> None:
    with (
        running(tmp_path, app("fault_server.py"), *NOTIFY) as manager,
        Prober(manager.port) as prober,
    ):
        status = manager.status()
        before = stable(status)
        address = notify_address(status["generations"][0]["pid"])
        sent = 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:

            def send(datagram: bytes, *fds_passed: int) -> None:
                nonlocal sent
                rights = array.array("i", fds_passed).tobytes()
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)] if fds_passed else []
                sender.sendmsg([datagram], ancillary, 0, address)
                sent += 1

            @settings(max_examples=150, deadline=None, database=None)
            @given(datagram=datagrams)
            def fuzz(datagram: bytes) -> None:
                send(datagram)

            fuzz()
            send(b"READY=1\nSTATUS=hijacked")  # well-formed, from outside every generation
            send(b"x" * 65000)  # oversized
            send(b"READY=1", *[sender.fileno()] * 3)  # fds passed along are closed at once
            wait_dropped(manager, sent)
            assert not holds(manager.process.pid, sender)
        after = stable(manager.status())
        prober.wait_answers(prober.answered + 3)
    assert after == before
    assert prober.failures == []


def wait_dropped(manager: Manager, wanted: int) -> None:
    """Wait until the log has accounted for ``wanted`` dropped datagrams."""
    counted = 0
    while counted < wanted:
        match = manager.wait_line(IGNORED)
        counted += int(match.group(1) or 1)
    assert counted == wanted


def test_ready_from_outside_the_starting_generation_is_ignored(tmp_path: Path) -> None:
    command = tmp_path / "command.json"
    first = app("fault_server.py", "--ready-on-usr1")
    with running(tmp_path, write_command(command, first), *NOTIFY) as manager:
        write_command(command, app("fault_server.py", "--never-ready"))
        manager.signal(signal.SIGHUP)
        starting = int(manager.wait_line(r"generation 2 started as pid (\d+)").group(1))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"READY=1", notify_address(starting))  # from the test: a stranger
        manager.wait_line(rf"ignored a notify datagram from pid {os.getpid()}: not a process")
        manager.signal(signal.SIGUSR1)  # forwarded to generation 1: READY=1 from the old one
        manager.wait_line(r"\[gen 1 pid \d+\] sent READY=1")
        states = [(g["generation"], g["state"]) for g in manager.status()["generations"]]
    assert states == [(1, "active"), (2, "starting")]
