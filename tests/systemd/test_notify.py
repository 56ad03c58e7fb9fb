"""sd_notify client and receiver, over real sockets and real processes."""

from __future__ import annotations

import array
import contextlib
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gapless.errors import NotifyError
from gapless.systemd.notify import MAX_MESSAGE, format_message, notify, parse_message
from gapless.systemd.notify_receiver import Notification, NotifyReceiver, in_process_tree

TIMEOUT = 10.0
SYSTEMD_NOTIFY = "/usr/bin/systemd-notify"

# Sends READY=1 with STATUS=argv[1], then stays alive until its stdin closes, so
# that its pid can still be placed in the process tree when the test looks.
SENDER = (
    "import sys; from gapless.systemd.notify import ready; ready(sys.argv[1]); sys.stdin.read()"
)


@pytest.fixture
def receiver() -> Iterator[NotifyReceiver]:
    with NotifyReceiver() as r:
        yield r


def receive_one(receiver: NotifyReceiver) -> Notification:
    with selectors.DefaultSelector() as selector:
        selector.register(receiver, selectors.EVENT_READ)
        if not selector.select(TIMEOUT):
            pytest.fail(f"no datagram on {receiver.address} within {TIMEOUT} s")
    note = receiver.receive()
    assert note is not None
    return note


def sockaddr(address: str) -> str:
    return "\0" + address[1:] if address.startswith("@") else address


@contextlib.contextmanager
def spawn(args: list[str], notify_socket: str = "") -> Iterator[subprocess.Popen[bytes]]:
    """A child whose stdin is a pipe we hold: closing it lets the child finish."""
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket}
    child = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        yield child
    finally:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.close()
        child.stdout.close()
        try:
            child.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise


# --- client ---------------------------------------------------------------------------


def test_notify_to_path_receiver_round_trips_fields_and_credentials(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with NotifyReceiver(path) as receiver:
        assert receiver.address == path
        sent = notify(
            ready=True,
            status="serving on :8000",
            mainpid=os.getpid(),
            extend_timeout=1.5,
            fields={"X_CUSTOM": "a=b c"},
            environ={"NOTIFY_SOCKET": path},
        )
        assert sent is True
        note = receive_one(receiver)
    assert dict(note.fields) == {
        "READY": "1",
        "STATUS": "serving on :8000",
        "MAINPID": str(os.getpid()),
        "EXTEND_TIMEOUT_USEC": "1500000",
        "X_CUSTOM": "a=b c",
    }
    assert (note.pid, note.uid, note.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert note.ready and not note.reloading and not note.stopping
    assert note.status == "serving on :8000" and note.mainpid == os.getpid()


def test_child_sends_to_abstract_address_with_its_own_credentials(
    receiver: NotifyReceiver,
) -> None:
    assert receiver.address.startswith("@")
    with spawn([sys.executable, "-c", SENDER, "up"], receiver.address) as child:
        note = receive_one(receiver)
        assert note.pid == child.pid
        assert (note.uid, note.gid) == (os.getuid(), os.getgid())
        assert dict(note.fields) == {"READY": "1", "STATUS": "up"}


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}])
def test_notify_without_notify_socket_is_a_no_op(environ: dict[str, str]) -> None:
    assert notify(ready=True, environ=environ) is False


def test_notify_to_missing_path_names_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.sock")
    with pytest.raises(NotifyError, match=r"absent\.sock"):
        notify(ready=True, environ={"NOTIFY_SOCKET": path})


def test_notify_to_missing_abstract_name_names_the_socket() -> None:
    name = f"@gapless-test/absent/{os.getpid()}"
    with pytest.raises(NotifyError, match="gapless-test/absent"):
        notify(ready=True, environ={"NOTIFY_SOCKET": name})


def test_notify_rejects_a_relative_notify_socket() -> None:
    with pytest.raises(NotifyError, match="'run/notify'"):
        notify(ready=True, environ={"NOTIFY_SOCKET": "run/notify"})


def test_reloading_carries_monotonic_usec(receiver: NotifyReceiver) -> None:
    before = time.monotonic_ns() // 1000
    notify(reloading=True, environ={"NOTIFY_SOCKET": receiver.address})
    after = time.monotonic_ns() // 1000
    note = receive_one(receiver)
    assert note.reloading
    assert before <= int(note.fields["MONOTONIC_USEC"]) <= after


def test_format_message_exact_bytes() -> None:
    assert format_message(ready=True, status="hi") == b"READY=1\nSTATUS=hi"
    assert format_message(stopping=True) == b"STOPPING=1"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"status": "two\nlines"}, "newline"),
        ({"fields": {"lower": "1"}}, "'lower'"),
        ({"fields": {"1X": "1"}}, "'1X'"),
        ({"fields": {"A-B": "1"}}, "'A-B'"),
        ({"fields": {"": "1"}}, "''"),
        ({"fields": {"A": "x\ny"}}, "A="),
        ({"fields": {"A": "x\0y"}}, "A="),
        ({"fields": {"A": "\udcff"}}, "UTF-8"),
        ({"ready": True, "fields": {"READY": "1"}}, "READY given twice"),
        ({"mainpid": 0}, "mainpid"),
        ({"mainpid": True}, "mainpid"),
        ({"extend_timeout": -1.0}, "extend_timeout"),
        ({"extend_timeout": float("nan")}, "extend_timeout"),
        ({"status": "x" * MAX_MESSAGE}, "over 4096"),
        ({}, "empty"),
    ],
)
def test_bad_arguments_raise_even_when_unsupervised(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(NotifyError, match=match):
        notify(environ={}, **kwargs)  # type: ignore[arg-type]


# --- systemd-notify and the process tree ------------------------------------------------


@pytest.mark.skipif(not os.path.exists(SYSTEMD_NOTIFY), reason="systemd-notify not installed")
def test_systemd_notify_is_a_valid_client(receiver: NotifyReceiver) -> None:
    # "; exit $?" keeps sh from exec'ing systemd-notify in its own place.
    script = f"{SYSTEMD_NOTIFY} --ready --status=hello; exit $?"
    with spawn(["sh", "-c", script], receiver.address) as shell:
        note = receive_one(receiver)
        assert note.ready and note.status == "hello"
        # systemd-notify first sends on behalf of its parent (the shell), which only
        # privileged callers may; otherwise under its own pid, a child of the shell.
        assert in_process_tree(note.pid, shell.pid)
        # Then it waits for a barrier: BARRIER=1 with a pipe fd, passed once we close it.
        assert dict(receive_one(receiver).fields) == {"BARRIER": "1"}
        assert shell.wait(TIMEOUT) == 0


def test_sender_under_root_is_in_the_tree(receiver: NotifyReceiver) -> None:
    # The sender is a grandchild: sh (the root) runs python, which sends.
    script = '"$0" -c "$1" tree; exit $?'
    with spawn(["sh", "-c", script, sys.executable, SENDER], receiver.address) as shell:
        note = receive_one(receiver)
        assert note.pid != shell.pid
        assert in_process_tree(note.pid, shell.pid)


def test_unrelated_sender_is_not_in_the_tree(receiver: NotifyReceiver) -> None:
    with (
        spawn([sys.executable, "-c", "import sys; sys.stdin.read()"]) as root,
        spawn([sys.executable, "-c", SENDER, "stranger"], receiver.address) as stranger,
    ):
        note = receive_one(receiver)
        assert note.pid == stranger.pid
        assert not in_process_tree(note.pid, root.pid)
        assert in_process_tree(note.pid, os.getpid())


def test_in_process_tree_reads_ppid_after_the_last_parenthesis() -> None:
    # A naive parse (after the first ')') would read ppid 1 from this comm.
    code = (
        "import sys; open('/proc/self/comm', 'w').write('a) S 1 (b');"
        "print('renamed', flush=True); sys.stdin.read()"
    )
    with spawn([sys.executable, "-c", code]) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == b"renamed\n"
        assert Path(f"/proc/{child.pid}/comm").read_text() == "a) S 1 (b\n"
        assert in_process_tree(child.pid, os.getpid())


def test_in_process_tree_basics() -> None:
    assert in_process_tree(os.getpid(), os.getpid())
    assert in_process_tree(os.getpid(), os.getppid())
    assert not in_process_tree(os.getppid(), os.getpid())
    assert not in_process_tree(0, os.getpid())
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert not in_process_tree(gone.pid, os.getpid())


# --- receiver ---------------------------------------------------------------------------


def test_receive_returns_none_when_nothing_is_pending(receiver: NotifyReceiver) -> None:
    assert receiver.receive() is None


def test_default_addresses_are_abstract_and_unique() -> None:
    with NotifyReceiver() as a, NotifyReceiver() as b:
        assert a.address.startswith(f"@gapless/notify/{os.getpid()}/")
        assert a.address != b.address


def test_path_is_unlinked_on_close_only_while_ours(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with NotifyReceiver(str(path)):
        assert path.is_socket()
    assert not path.exists()

    receiver = NotifyReceiver(str(path))
    path.unlink()
    path.write_text("someone else's")
    receiver.close()
    receiver.close()
    assert path.read_text() == "someone else's"


@pytest.mark.parametrize("address", ["relative.sock", ""])
def test_receiver_rejects_a_malformed_address(address: str) -> None:
    with pytest.raises(NotifyError, match="absolute path"):
        NotifyReceiver(address)


def test_receiver_refuses_a_taken_path(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with NotifyReceiver(path), pytest.raises(NotifyError, match=r"notify\.sock"):
        NotifyReceiver(path)
    missing_dir = str(tmp_path / "no" / "such" / "dir.sock")
    with pytest.raises(NotifyError, match=r"dir\.sock"):
        NotifyReceiver(missing_dir)


@pytest.mark.parametrize(
    "payload",
    [
        b"STATUS=" + b"x" * (64 * 1024 - 7),
        b"STATUS=" + b"x" * (MAX_MESSAGE - 6),
        b"\xff\xfe\x80 garbage",
        b"",
        b"READY=1\x00",
        b"READY",
        b"READY=1\n\nSTATUS=x",
        b"ready=1",
        b"STATUS=a\nSTATUS=b",
    ],
    ids=["64KiB", "4097B", "binary", "empty", "nul", "no-equals", "empty-line", "lower", "dup"],
)
def test_bad_datagram_raises_and_the_next_one_is_received(
    receiver: NotifyReceiver, payload: bytes
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.sendto(payload, sockaddr(receiver.address))
        sender.sendto(b"READY=1\n", sockaddr(receiver.address))
    with pytest.raises(NotifyError):
        receive_one(receiver)
    assert receive_one(receiver).ready
    assert receiver.receive() is None


def test_datagram_of_exactly_max_message_is_accepted(receiver: NotifyReceiver) -> None:
    payload = b"STATUS=" + b"x" * (MAX_MESSAGE - 7)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.sendto(payload, sockaddr(receiver.address))
    assert len(receive_one(receiver).fields["STATUS"]) == MAX_MESSAGE - 7


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_passed_fds_are_closed_at_once(receiver: NotifyReceiver) -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)  # a leaked copy then fails the read, not hangs it
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            rights = array.array("i", [write_end] * 3)
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)]
            sender.sendmsg([b"BARRIER=1"], ancillary, 0, sockaddr(receiver.address))
        before = fd_count()
        assert dict(receive_one(receiver).fields) == {"BARRIER": "1"}
        assert fd_count() == before
        os.close(write_end)
        write_end = -1
        # EOF proves no copy of the write end survives in this process.
        assert os.read(read_end, 1) == b""
    finally:
        os.close(read_end)
        if write_end != -1:
            os.close(write_end)


def test_notification_properties() -> None:
    def note(**fields: str) -> Notification:
        return Notification(pid=1, uid=0, gid=0, fields=fields)

    assert note(READY="1").ready and not note(READY="0").ready
    assert note(STOPPING="1").stopping and note(RELOADING="1").reloading
    assert note().status is None and note(STATUS="").status == ""
    assert note(MAINPID="42").mainpid == 42
    for bad in ["", "0", "-1", "4x", "٤٢"]:
        assert note(MAINPID=bad).mainpid is None


# --- the parser, by property -------------------------------------------------------------

keys = st.from_regex(r"[A-Z][A-Z0-9_]{0,15}", fullmatch=True)
values = st.text(st.characters(codec="utf-8", exclude_characters="\n\0"), max_size=40)
near_valid_lines = st.one_of(
    st.from_regex(rb"[A-Za-z0-9_]{0,4}=?[^\n]{0,8}", fullmatch=True), st.binary(max_size=8)
)


@given(st.binary(max_size=MAX_MESSAGE + 8))
def test_parse_arbitrary_bytes_returns_a_dict_or_raises_notify_error(data: bytes) -> None:
    check_parse_contract(data)


@given(st.lists(near_valid_lines, max_size=8).map(b"\n".join))
def test_parse_near_valid_messages_returns_a_dict_or_raises_notify_error(data: bytes) -> None:
    check_parse_contract(data)


def check_parse_contract(data: bytes) -> None:
    try:
        fields = parse_message(data)
    except NotifyError:
        return
    # Whatever is accepted is re-encoded to the same bytes (bar a trailing newline).
    assert format_message(fields=fields) == data.removesuffix(b"\n")


@given(st.dictionaries(keys, values, min_size=1, max_size=10))
def test_format_then_parse_round_trips(fields: dict[str, str]) -> None:
    assert parse_message(format_message(fields=fields)) == fields


def test_non_blocking_send_drops_instead_of_stalling_when_nobody_reads() -> None:
    with NotifyReceiver() as receiver:
        environ = {"NOTIFY_SOCKET": receiver.address}
        with pytest.raises(NotifyError, match="is not being read"):
            for _ in range(10_000):  # far beyond the kernel's queue of unread datagrams
                notify(status="still here", environ=environ, block=False)
        assert receiver.receive() is not None
