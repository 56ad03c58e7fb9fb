"""systemd's LISTEN_* protocol: parsing, consuming in real processes, and matching."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import string
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lines import read_line, read_until_eof

from gapless.errors import InheritanceError
from gapless.sockets.addresses import Address, Bind, FdAddress, TcpAddress, UnixAddress, parse_bind
from gapless.sockets.listeners import listener_address, open_listener
from gapless.systemd.listen_fds import (
    InheritedFd,
    MatchPlan,
    consume_listen_fds,
    listen_env,
    match_binds,
    read_listen_fds,
)

VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
PID = 4242

# ---------------------------------------------------------------- read_listen_fds


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        ({"LISTEN_FDS": "2"}, []),
        ({"LISTEN_PID": str(PID)}, []),
        ({"LISTEN_PID": "1", "LISTEN_FDS": "2"}, []),
        ({"LISTEN_PID": "1", "LISTEN_FDS": "garbage", "LISTEN_FDNAMES": "a:b:c"}, []),
        ({"LISTEN_PID": str(PID), "LISTEN_FDS": "1"}, [InheritedFd(3, None)]),
        (
            {"LISTEN_PID": str(PID), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:unknown"},
            [InheritedFd(3, "web"), InheritedFd(4, None)],
        ),
        (
            {"LISTEN_PID": str(PID), "LISTEN_FDS": "3", "LISTEN_FDNAMES": ":a b:x"},
            [InheritedFd(3, None), InheritedFd(4, "a b"), InheritedFd(5, "x")],
        ),
        ({"LISTEN_PID": str(PID), "LISTEN_FDS": "1", "LISTEN_FDNAMES": ""}, [InheritedFd(3, None)]),
    ],
)
def test_read_listen_fds(environ: dict[str, str], expected: list[InheritedFd]) -> None:
    assert read_listen_fds(environ, PID) == expected


def test_read_listen_fds_accepts_the_largest_count() -> None:
    fds = read_listen_fds({"LISTEN_PID": str(PID), "LISTEN_FDS": "4096"}, PID)
    assert [item.fd for item in fds] == list(range(3, 4099))


@pytest.mark.parametrize(
    "value",
    ["", "abc", "0", "-1", "+1", " 1", "1 ", "1\n", "01", "0x3", "1e3", "٣", "4097", "9" * 40],
)
def test_read_listen_fds_rejects_a_malformed_count(value: str) -> None:
    environ = {"LISTEN_PID": str(PID), "LISTEN_FDS": value}
    with pytest.raises(InheritanceError) as caught:
        read_listen_fds(environ, PID)
    assert str(caught.value).startswith(
        f"invalid LISTEN_FDS={value!r}: expected a count of file descriptors"
    )


@pytest.mark.parametrize("value", ["", "self", "0", "-42", "+42", " 42", "042", "4294967296"])
def test_read_listen_fds_rejects_a_malformed_pid(value: str) -> None:
    with pytest.raises(InheritanceError, match=r"^invalid LISTEN_PID=.*: expected a process id"):
        read_listen_fds({"LISTEN_PID": value, "LISTEN_FDS": "1"}, PID)


@pytest.mark.parametrize(("count", "names"), [("2", "web"), ("1", "a:b"), ("2", "a:b:c")])
def test_read_listen_fds_rejects_a_name_count_mismatch(count: str, names: str) -> None:
    environ = {"LISTEN_PID": str(PID), "LISTEN_FDS": count, "LISTEN_FDNAMES": names}
    with pytest.raises(InheritanceError, match=f"names for LISTEN_FDS={count}"):
        read_listen_fds(environ, PID)


_plausible = st.one_of(
    st.text(),
    st.integers(-(10**12), 10**12).map(str),
    st.from_regex(r"[0-9: +\-a-z]{0,12}", fullmatch=True),
)


@given(
    pid=st.integers(1, 2**22),
    pid_matches=st.booleans(),
    environ=st.dictionaries(st.sampled_from(VARIABLES) | st.text(max_size=4), _plausible),
)
def test_read_listen_fds_returns_a_list_or_raises_inheritance_error(
    pid: int, pid_matches: bool, environ: dict[str, str]
) -> None:
    if pid_matches:
        environ["LISTEN_PID"] = str(pid)
    try:
        result = read_listen_fds(environ, pid)
    except InheritanceError:
        return
    assert all(isinstance(item, InheritedFd) for item in result)


_names = st.lists(
    st.none() | st.text(alphabet=string.printable[:95].replace(":", ""), min_size=1, max_size=255),
    min_size=1,
    max_size=40,
)


@given(names=_names, pid=st.integers(1, 2**22))
def test_listen_env_round_trips(names: list[str | None], pid: int) -> None:
    environ = {"LISTEN_PID": str(pid), **listen_env(names)}
    expected = [InheritedFd(3 + i, None if n == "unknown" else n) for i, n in enumerate(names)]
    assert read_listen_fds(environ, pid) == expected


def test_listen_env() -> None:
    assert listen_env(["web", None]) == {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:unknown"}
    assert listen_env([]) == {}


@pytest.mark.parametrize("name", ["", "a:b", "tab\there", "é", "x" * 256, "new\nline"])
def test_listen_env_rejects_a_bad_name(name: str) -> None:
    with pytest.raises(InheritanceError, match=r"^invalid socket name .*: use 1-255 printable"):
        listen_env(["ok", name])


# ---------------------------------------------------------------- consume_listen_fds


def test_consume_removes_the_variables_even_when_they_are_not_for_us() -> None:
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web", "HOME": "/root"}
    assert consume_listen_fds(environ, pid=PID) == []
    assert environ == {"HOME": "/root"}


def test_consume_removes_the_variables_when_they_are_malformed() -> None:
    environ = {"LISTEN_PID": str(PID), "LISTEN_FDS": "many", "LISTEN_FDNAMES": "web"}
    with pytest.raises(InheritanceError):
        consume_listen_fds(environ, pid=PID)
    assert environ == {}


def test_consume_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert consume_listen_fds() == []
    assert not any(name in os.environ for name in VARIABLES)


# A child that takes its sockets, accepts one connection on the first, and reports
# what it saw and what a grandchild (started without closing fds) sees.
_CHILD = textwrap.dedent(
    """
    import json, os, stat, subprocess, sys
    from gapless.systemd.listen_fds import consume_listen_fds

    def sockets_open():
        found = []
        for fd in (3, 4):
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    found.append(fd)
            except OSError:
                pass
        return found

    result = {}
    try:
        pairs = consume_listen_fds()
    except Exception as exc:
        result["error"] = [type(exc).__name__, str(exc)]
        pairs = []
    result["sockets"] = [
        [name, s.fileno(), s.family.name, os.get_inheritable(s.fileno())] for name, s in pairs
    ]
    if pairs:
        conn, _ = pairs[0][1].accept()
        result["accepted"] = [conn.family.name, conn.recv(4).decode()]
    result["env"] = sorted(k for k in os.environ if k.startswith("LISTEN_"))
    result["open"] = sockets_open()
    grandchild = "import json, os; print(json.dumps(sorted(os.environ)))"
    seen = subprocess.run(
        [sys.executable, "-c", grandchild], close_fds=False, capture_output=True, check=True
    )
    result["grandchild_env"] = [k for k in json.loads(seen.stdout) if k.startswith("LISTEN_")]
    print(json.dumps(result), flush=True)
    """
)


def run_with_listen_fds(fds: list[int], names: list[str | None], listen_pid: str) -> dict:
    """Run the child with ``fds`` on 3, 4, ... and LISTEN_PID set by the shell that execs it."""
    # Out of the way of 3, 4 first, so no dup2 action overwrites a later source.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
    read_end, write_end = os.pipe()
    actions = [(os.POSIX_SPAWN_DUP2, write_end, 1)]
    actions += [(os.POSIX_SPAWN_DUP2, fd, 3 + i) for i, fd in enumerate(high)]
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(listen_env(names))
    script = f'LISTEN_PID={listen_pid} exec "$0" -c "$1"'
    argv = ["sh", "-c", script, sys.executable, _CHILD]
    pid = os.posix_spawn("/bin/sh", argv, env, file_actions=actions)
    for fd in [*high, write_end]:
        os.close(fd)
    try:
        output = read_until_eof(read_end, 20.0)
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return dict(json.loads(output))


def test_child_adopts_its_sockets_and_hides_them_from_grandchildren(tmp_path: Path) -> None:
    tcp = open_listener(parse_bind("127.0.0.1:0"))
    unix = open_listener(parse_bind(f"unix:{tmp_path / 'app.sock'}"))
    with tcp, unix, socket.create_connection(("127.0.0.1", listener_address(tcp).port)) as client:
        client.sendall(b"ping")
        result = run_with_listen_fds([tcp.fileno(), unix.fileno()], ["web", None], "$$")
    assert result["sockets"] == [["web", 3, "AF_INET", False], [None, 4, "AF_UNIX", False]]
    assert result["accepted"] == ["AF_INET", "ping"]
    assert result["env"] == []
    assert result["grandchild_env"] == []


def test_child_ignores_sockets_meant_for_another_pid() -> None:
    with open_listener(parse_bind("127.0.0.1:0")) as tcp:
        result = run_with_listen_fds([tcp.fileno()], ["web"], "$PPID")
    assert result["sockets"] == [] and "error" not in result
    assert result["env"] == [] and result["grandchild_env"] == []


def test_child_refuses_a_pipe_and_closes_nothing() -> None:
    read_end, write_end = os.pipe()
    with open_listener(parse_bind("127.0.0.1:0")) as tcp:
        result = run_with_listen_fds([tcp.fileno(), read_end], [None, None], "$$")
    os.close(read_end)
    os.close(write_end)
    kind, message = result["error"]
    assert kind == "AdoptError"
    assert message.startswith("LISTEN_FDS=2: fd 4 is a pipe, not a listening stream socket")
    assert result["open"] == [3]  # fd 3 detached back, not closed; fd 4 is the pipe
    assert result["env"] == [] and result["grandchild_env"] == []


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing"
)
def test_under_systemd_socket_activate(tmp_path: Path) -> None:
    path = tmp_path / "activate.sock"
    argv = ["systemd-socket-activate", "-l", str(path), "--fdname=web", sys.executable]
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    with subprocess.Popen(
        [*argv, "-c", _CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as tool:
        assert tool.stdout is not None and tool.stderr is not None
        try:
            # It execs the child only once a client connects, after saying it listens.
            line = read_line(tool.stderr.fileno(), 20.0).decode()
            assert line.startswith("Listening on"), line
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(path))
                client.sendall(b"ping")
                output = read_until_eof(tool.stdout.fileno(), 20.0)
            assert tool.wait(timeout=20) == 0
        finally:
            if tool.poll() is None:
                tool.kill()
    result = json.loads(output)
    assert result["sockets"] == [["web", 3, "AF_UNIX", False]]
    assert result["accepted"] == ["AF_UNIX", "ping"]
    assert result["env"] == []
    assert result["grandchild_env"] == []


# ---------------------------------------------------------------- match_binds


def actual(text: str) -> Address:
    return parse_bind(text).address


def binds(*texts: str) -> list[Bind]:
    return [parse_bind(text) for text in texts]


@pytest.mark.parametrize(
    ("requested", "inherited", "expected"),
    [
        pytest.param([], [], MatchPlan({}, [], []), id="nothing"),
        pytest.param(
            binds("127.0.0.1:8000"),
            [(None, actual("127.0.0.1:8000"))],
            MatchPlan({0: 0}, [], []),
            id="same-address",
        ),
        pytest.param(
            binds(":8001"),
            [(None, actual("0.0.0.0:8000"))],
            MatchPlan({}, [0], [0]),
            id="port-changed",
        ),
        pytest.param(
            binds("web=127.0.0.1:0"),
            [("web", actual("127.0.0.1:43210"))],
            MatchPlan({0: 0}, [], []),
            id="port-0-by-name",
        ),
        pytest.param(
            binds("127.0.0.1:0"),
            [(None, actual("127.0.0.1:43210"))],
            MatchPlan({}, [0], [0]),
            id="port-0-without-name-opens-anew",
        ),
        pytest.param(
            binds("api=127.0.0.1:8000"),
            [("web", actual("127.0.0.1:8000"))],
            MatchPlan({0: 0}, [], []),
            id="name-mismatch-falls-back-to-address",
        ),
        pytest.param(
            binds("web=127.0.0.1:9000"),
            [("web", actual("127.0.0.1:8000"))],
            MatchPlan({}, [0], [0]),
            id="name-with-another-port",
        ),
        pytest.param(
            binds("a=127.0.0.1:0", "b=127.0.0.1:0"),
            [("b", actual("127.0.0.1:5001")), ("a", actual("127.0.0.1:5000"))],
            MatchPlan({0: 1, 1: 0}, [], []),
            id="names-cross",
        ),
        pytest.param(
            binds("127.0.0.1:8000", "127.0.0.1:8000"),
            [(None, actual("127.0.0.1:8000"))],
            MatchPlan({0: 0}, [1], []),
            id="each-inherited-used-once",
        ),
        pytest.param(
            [Bind(FdAddress(3))],
            [(None, actual("127.0.0.1:8000"))],
            MatchPlan({}, [0], [0]),
            id="fd-never-matches",
        ),
        pytest.param(
            binds("unix:/run/a.sock", "unix:@b", "unix:/run/c.sock"),
            [
                (None, UnixAddress("b", abstract=True)),
                (None, UnixAddress("/run/a.sock")),
                (None, UnixAddress("/run/b.sock")),
            ],
            MatchPlan({0: 1, 1: 0}, [2], [2]),
            id="unix-paths-and-abstract",
        ),
        pytest.param(
            binds("localhost:8000", "[::1]:8000"),
            [(None, actual("[::1]:8000")), (None, actual("127.0.0.1:8000"))],
            MatchPlan({0: 1, 1: 0}, [], []),
            id="literal-before-host-name",
        ),
        pytest.param(
            binds(":8000", "[::]:9000"),
            [(None, actual("[::]:8000")), (None, actual("0.0.0.0:9000"))],
            MatchPlan({}, [0, 1], [0, 1]),
            id="wildcards-of-another-family",
        ),
        pytest.param(
            [Bind(TcpAddress("0:0::0", 8000, socket.AF_INET6))],
            [(None, actual("[::]:8000"))],
            MatchPlan({0: 0}, [], []),
            id="ip-spelled-differently",
        ),
        pytest.param(
            binds("web=tcp6://localhost:0"),
            [("web", actual("127.0.0.1:43210"))],
            MatchPlan({}, [0], [0]),
            id="name-with-another-family",
        ),
        pytest.param(
            binds("web=localhost:0"),
            [("web", actual("127.0.0.1:43210"))],
            MatchPlan({0: 0}, [], []),
            id="host-name-and-port-0-by-name",
        ),
    ],
)
def test_match_binds(
    requested: list[Bind], inherited: list[tuple[str | None, Address]], expected: MatchPlan
) -> None:
    assert match_binds(requested, inherited) == expected


def test_match_binds_with_real_sockets(tmp_path: Path) -> None:
    old = [open_listener(parse_bind(t)) for t in ("127.0.0.1:0", f"unix:{tmp_path / 's'}")]
    try:
        inherited = [("web", listener_address(old[0])), (None, listener_address(old[1]))]
        plan = match_binds(binds("web=127.0.0.1:0", f"unix:{tmp_path / 's'}"), inherited)
        assert plan == MatchPlan({0: 0, 1: 1}, [], [])
    finally:
        for sock in old:
            sock.close()
