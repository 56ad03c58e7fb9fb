import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gapless.errors import BindError
from gapless.sockets.addresses import Bind, FdAddress, TcpAddress, UnixAddress, parse_bind

V4, V6, ANY = socket.AF_INET, socket.AF_INET6, socket.AF_UNSPEC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8000", Bind(TcpAddress("127.0.0.1", 8000, V4))),
        (":8000", Bind(TcpAddress("0.0.0.0", 8000, V4))),
        ("localhost:0", Bind(TcpAddress("localhost", 0, ANY))),
        ("[::1]:8080", Bind(TcpAddress("::1", 8080, V6))),
        ("[::]:80", Bind(TcpAddress("::", 80, V6))),
        ("tcp://example.com:443", Bind(TcpAddress("example.com", 443, ANY))),
        ("tcp4://localhost:1", Bind(TcpAddress("localhost", 1, V4))),
        ("tcp4://:1", Bind(TcpAddress("0.0.0.0", 1, V4))),
        ("tcp6://[::1]:65535", Bind(TcpAddress("::1", 65535, V6))),
        ("tcp6://:9000", Bind(TcpAddress("::", 9000, V6))),
        ("unix:/run/app.sock", Bind(UnixAddress("/run/app.sock"))),
        ("unix:rel/app.sock", Bind(UnixAddress("rel/app.sock"))),
        ("unix:@gapless/test", Bind(UnixAddress("gapless/test", abstract=True))),
        ("fd://3", Bind(FdAddress(3))),
        ("web=127.0.0.1:8000", Bind(TcpAddress("127.0.0.1", 8000, V4), "web")),
        ("admin=unix:/run/admin.sock", Bind(UnixAddress("/run/admin.sock"), "admin")),
        ("api=[::1]:1", Bind(TcpAddress("::1", 1, V6), "api")),
        ("sock=fd://7", Bind(FdAddress(7), "sock")),
    ],
)
def test_valid_binds(text: str, expected: Bind) -> None:
    assert parse_bind(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("x:99999", "port must be 1-65535"),
        ("127.0.0.1", "missing ':PORT'"),
        ("127.0.0.1:", "missing port"),
        ("127.0.0.1:http", "is not a number"),
        ("::1:80", "must be written in brackets"),
        ("[::1:80", "missing ']'"),
        ("[127.0.0.1]:80", "is not an IPv6 address"),
        ("[::1]80", "expected ':PORT'"),
        ("tcp4://[::1]:80", "is not an IPv4 address"),
        ("tcp6://127.0.0.1:80", "is not an IPv6 address"),
        ("udp://127.0.0.1:53", "unknown scheme"),
        ("unix:", "empty unix socket path"),
        ("unix:@", "empty unix socket path"),
        ("unix:/" + "a" * 200, "the limit is 107"),
        ("fd://", "non-negative integer"),
        ("fd://-1", "non-negative integer"),
        ("", "empty address"),
        ("bad host:80", "neither an IP address nor a host name"),
        ("we b=:80", "name 'we b' may use only"),
        ("web=", "empty address"),
        ("web!=:80", "name 'web!'"),
    ],
)
def test_invalid_binds_name_the_input_and_the_reason(text: str, reason: str) -> None:
    with pytest.raises(BindError) as info:
        parse_bind(text)
    message = str(info.value)
    assert message.startswith(f"invalid bind {text!r}: ")
    assert reason in message
    assert "\n" not in message


def test_the_issue_example_message() -> None:
    with pytest.raises(BindError, match=r"^invalid bind 'x:99999': port must be 1-65535"):
        parse_bind("x:99999")


def test_bind_values_are_frozen_and_hashable() -> None:
    bind = parse_bind("web=:8000")
    assert {bind: 1}[parse_bind("web=:8000")] == 1
    with pytest.raises(AttributeError):
        bind.name = "other"  # type: ignore[misc]


@given(st.text(max_size=80))
def test_parse_bind_returns_a_bind_or_raises_bind_error(text: str) -> None:
    try:
        bind = parse_bind(text)
    except BindError as exc:
        assert repr(text) in str(exc)
    else:
        assert isinstance(bind, Bind)


@given(
    st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_]{1,20}", fullmatch=True)),
    st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
        st.just("localhost"),
    ),
    st.integers(0, 65535),
)
def test_str_round_trips(name: str | None, host: str, port: int) -> None:
    text = f"{host}:{port}" if name is None else f"{name}={host}:{port}"
    bind = parse_bind(text)
    assert parse_bind(str(bind)) == bind
    assert isinstance(bind.address, TcpAddress)
    assert bind.address.port == port
    assert bind.name == name
