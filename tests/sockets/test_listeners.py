"""Opening and adopting listening sockets, with real sockets and processes."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gapless.errors import (
    AddressInUseError,
    AdoptError,
    ListenError,
    ListenPermissionError,
    UnixPathTooLongError,
)
from gapless.sockets.addresses import Bind, FdAddress, TcpAddress, UnixAddress, parse_bind
from gapless.sockets.listeners import (
    adopt_listener,
    listener_address,
    open_listener,
    remove_unix_path,
    stamp_unix_path,
)


def listening(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def assert_serves(sock: socket.socket, connect_to: object) -> None:
    """A client connects and the listener accepts it and reads what it sent."""
    with socket.socket(sock.family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(connect_to)
        client.sendall(b"ping")
        sock.settimeout(5)
        conn, _ = sock.accept()
        with conn:
            assert conn.recv(4) == b"ping"
        sock.settimeout(None)


def open_fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


@pytest.fixture
def unix_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def test_tcp_v4_listens_on_a_real_port_with_reuseaddr() -> None:
    with open_listener(parse_bind("127.0.0.1:0")) as sock:
        address = listener_address(sock)
        assert address == TcpAddress("127.0.0.1", address.port, socket.AF_INET)
        assert address.port > 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert listening(sock)
        assert not sock.get_inheritable()
        assert sock.gettimeout() is None and os.get_blocking(sock.fileno())
        assert_serves(sock, ("127.0.0.1", address.port))


def test_tcp_v6_loopback_is_v6_only() -> None:
    with open_listener(parse_bind("[::1]:0")) as sock:
        address = listener_address(sock)
        assert (address.host, address.family) == ("::1", socket.AF_INET6)
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert_serves(sock, ("::1", address.port))


def test_tcp_host_name_is_resolved() -> None:
    with open_listener(parse_bind("localhost:0")) as sock:
        address = listener_address(sock)
        assert isinstance(address, TcpAddress)
        assert address.host in ("127.0.0.1", "::1")
        assert_serves(sock, (address.host, address.port))


def test_unix_path_with_mode(unix_dir: Path) -> None:
    path = unix_dir / "app.sock"
    with open_listener(parse_bind(f"unix:{path}"), mode=0o600) as sock:
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert listener_address(sock) == UnixAddress(str(path))
        assert listening(sock)
        assert_serves(sock, str(path))


def test_abstract_unix_socket() -> None:
    name = f"gapless-test-{os.getpid()}-abstract"
    with open_listener(parse_bind(f"unix:@{name}")) as sock:
        assert listener_address(sock) == UnixAddress(name, abstract=True)
        assert_serves(sock, "\0" + name)
        with pytest.raises(AddressInUseError, match=f"unix:@{name}"):
            open_listener(parse_bind(f"unix:@{name}"))


def test_stale_unix_socket_file_is_replaced(unix_dir: Path) -> None:
    path = unix_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # closed without unlink: the file stays, nobody listens
    assert path.is_socket()
    with open_listener(parse_bind(f"unix:{path}")) as sock:
        assert_serves(sock, str(path))


def test_live_unix_socket_is_refused_and_kept(unix_dir: Path) -> None:
    path = unix_dir / "live.sock"
    with open_listener(parse_bind(f"unix:{path}")) as first:
        with pytest.raises(AddressInUseError, match=f"'unix:{path}': another process"):
            open_listener(parse_bind(f"unix:{path}"))
        first.settimeout(5)
        probe, _ = first.accept()  # the liveness probe: it connected, then closed
        with probe:
            assert probe.recv(1) == b""
        assert_serves(first, str(path))


def test_regular_file_at_unix_path_is_refused_and_kept(unix_dir: Path) -> None:
    path = unix_dir / "data.txt"
    path.write_text("user data")
    with pytest.raises(AddressInUseError, match="exists and is not a socket"):
        open_listener(parse_bind(f"unix:{path}"))
    assert path.read_text() == "user data"


def test_tcp_port_in_use_names_the_address_and_leaks_no_fd() -> None:
    with open_listener(parse_bind("127.0.0.1:0")) as taken:
        port = listener_address(taken).port
        before = open_fds()
        with pytest.raises(AddressInUseError) as caught:
            open_listener(parse_bind(f"127.0.0.1:{port}"))
        assert str(caught.value) == (
            f"cannot listen on '127.0.0.1:{port}': address already in use; "
            "stop the other process or choose another port"
        )
        assert open_fds() == before


def test_missing_directory(unix_dir: Path) -> None:
    path = unix_dir / "missing" / "app.sock"
    with pytest.raises(ListenError, match=r"directory .*missing' does not exist"):
        open_listener(parse_bind(f"unix:{path}"))


def test_address_not_on_this_host() -> None:
    with pytest.raises(ListenError, match=r"192\.0\.2\.1 is not an address of this host"):
        open_listener(parse_bind("192.0.2.1:0"))  # TEST-NET-1, assigned to nobody


def test_unresolvable_host() -> None:
    # An IPv4 literal asked for as IPv6 fails in getaddrinfo without any DNS query.
    bind = Bind(TcpAddress("127.0.0.1", 0, socket.AF_INET6))
    with pytest.raises(ListenError, match=r"cannot resolve host '127\.0\.0\.1'"):
        open_listener(bind)


def test_unix_path_too_long(unix_dir: Path) -> None:
    bind = Bind(UnixAddress(str(unix_dir / ("x" * 120))))
    with pytest.raises(UnixPathTooLongError, match="the limit is 107"):
        open_listener(bind)


_AS_NOBODY = textwrap.dedent(
    """
    import encodings.idna  # getaddrinfo imports it lazily; nobody cannot read our venv
    import json, os, sys
    from gapless.sockets.addresses import parse_bind
    from gapless.sockets.listeners import open_listener
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    try:
        open_listener(parse_bind(sys.argv[1]))
    except Exception as exc:
        print(json.dumps([type(exc).__name__, str(exc)]))
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
@pytest.mark.parametrize(
    ("bind", "hint"),
    [
        ("127.0.0.1:80", "ports below 1024 need root"),
        ("unix:{dir}/app.sock", "choose a directory this user may write to"),
    ],
)
def test_permission_denied_for_an_unprivileged_user(bind: str, hint: str, unix_dir: Path) -> None:
    bind = bind.format(dir=unix_dir)
    result = subprocess.run(
        [sys.executable, "-c", _AS_NOBODY, bind],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    kind, message = json.loads(result.stdout)
    assert kind == ListenPermissionError.__name__
    assert message.startswith(f"cannot listen on '{parse_bind(bind).address}': permission denied")
    assert hint in message


def test_adopt_a_listening_tcp_socket() -> None:
    original = socket.create_server(("127.0.0.1", 0))
    fd = original.detach()
    os.set_inheritable(fd, True)
    with adopt_listener(fd) as sock:
        assert sock.fileno() == fd
        assert (sock.family, sock.type) == (socket.AF_INET, socket.SOCK_STREAM)
        assert not os.get_inheritable(fd)
        address = listener_address(sock)
        assert_serves(sock, (address.host, address.port))


def test_adopt_keeps_a_non_blocking_fd_non_blocking(unix_dir: Path) -> None:
    original = socket.socket(socket.AF_UNIX)
    original.bind(str(unix_dir / "nb.sock"))
    original.listen()
    original.setblocking(False)
    with adopt_listener(original.detach()) as sock:
        assert sock.family == socket.AF_UNIX
        assert sock.gettimeout() == 0.0
        assert not os.get_blocking(sock.fileno())


def test_open_listener_adopts_an_fd_bind() -> None:
    original = socket.create_server(("127.0.0.1", 0))
    fd = original.detach()
    with open_listener(Bind(FdAddress(fd))) as sock:
        assert sock.fileno() == fd and listening(sock)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
            "is a datagram socket, not a listening stream socket; pass a socket after listen()",
        ),
        (
            lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
            "is a stream socket that is not listening",
        ),
    ],
    ids=["udp", "tcp-not-listening"],
)
def test_adopt_refuses_a_socket_and_leaves_it_open(
    make: Callable[[], socket.socket], message: str
) -> None:
    with make() as sock:
        fd = sock.fileno()
        with pytest.raises(AdoptError, match=f"^fd {fd} {message}"):
            adopt_listener(fd)
        assert stat.S_ISSOCK(os.fstat(fd).st_mode)  # still open, still the caller's


def test_adopt_refuses_a_pipe_and_leaves_it_open(pipe: tuple[int, int]) -> None:
    r, _ = pipe
    with pytest.raises(AdoptError, match=f"^fd {r} is a pipe, not a listening stream socket"):
        adopt_listener(r)
    os.fstat(r)


def test_adopt_refuses_a_closed_fd(pipe: tuple[int, int]) -> None:
    closed = os.dup(pipe[0])
    os.close(closed)
    with pytest.raises(AdoptError, match=f"^fd {closed} is not open"):
        adopt_listener(closed)
    with pytest.raises(AdoptError, match="is not open"):
        adopt_listener(-1)


def test_remove_unix_path_removes_only_our_own_file(unix_dir: Path) -> None:
    path = unix_dir / "app.sock"
    with open_listener(parse_bind(f"unix:{path}")) as sock:
        stamp = stamp_unix_path(sock)
        assert stamp is not None and stamp.path == str(path)
    with open_listener(parse_bind(f"unix:{path}")) as successor:
        # The path was re-bound (stale file replaced): it is the successor's now.
        assert not remove_unix_path(stamp)
        assert path.is_socket()
        assert remove_unix_path(stamp_unix_path(successor))
    assert not path.exists()
    assert not remove_unix_path(stamp)


def test_stamp_is_none_without_a_path() -> None:
    with open_listener(parse_bind("127.0.0.1:0")) as tcp:
        assert stamp_unix_path(tcp) is None
    with open_listener(parse_bind(f"unix:@gapless-test-{os.getpid()}-stamp")) as abstract:
        assert stamp_unix_path(abstract) is None
    assert not remove_unix_path(None)
