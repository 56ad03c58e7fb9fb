"""Bind strings, parsed once into typed frozen values.

Accepted forms, each with an optional ``NAME=`` prefix (the name travels in
``LISTEN_FDNAMES`` and lets a successor find its socket even when the address
changed, e.g. a port 0 bind)::

    HOST:PORT   127.0.0.1:8000, localhost:8000
    :PORT       every IPv4 interface (0.0.0.0)
    [V6]:PORT   [::1]:8000, [::]:8000
    tcp://HOST:PORT, tcp4://HOST:PORT, tcp6://[V6]:PORT
    unix:/path/to/socket, unix:relative/path, unix:@abstract-name
    fd://N      an already open listening socket on fd N

Example::

    >>> parse_bind("web=[::1]:8080")
    Bind(address=TcpAddress(host='::1', port=8080, family=<AddressFamily.AF_INET6: 10>), name='web')
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

from ..errors import BindError

__all__ = ["Address", "Bind", "FdAddress", "TcpAddress", "UnixAddress", "parse_bind"]

# systemd's rule for LISTEN_FDNAMES entries: printable ASCII, no ':', at most 255.
_NAME = re.compile(r"[A-Za-z0-9_.\-@+]{1,255}")
_UNIX_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


@dataclass(frozen=True)
class TcpAddress:
    """A TCP address. ``family`` is AF_INET or AF_INET6 when fixed by the bind
    (a literal or a ``tcp4://``/``tcp6://`` scheme), AF_UNSPEC for a host name."""

    host: str
    port: int
    family: socket.AddressFamily = socket.AF_UNSPEC

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class UnixAddress:
    """A unix stream socket: a filesystem path, or an abstract name (no file)."""

    path: str
    abstract: bool = False

    def __str__(self) -> str:
        return f"unix:@{self.path}" if self.abstract else f"unix:{self.path}"

    @property
    def sockaddr(self) -> str:
        """The address as ``socket.bind`` takes it."""
        return "\0" + self.path if self.abstract else self.path


@dataclass(frozen=True)
class FdAddress:
    """A listening socket already open on a file descriptor."""

    fd: int

    def __str__(self) -> str:
        return f"fd://{self.fd}"


Address = TcpAddress | UnixAddress | FdAddress


@dataclass(frozen=True)
class Bind:
    """A requested listener: where to listen and, optionally, its name."""

    address: Address
    name: str | None = None

    def __str__(self) -> str:
        return f"{self.name}={self.address}" if self.name else str(self.address)


def parse_bind(text: str) -> Bind:
    """Parse a bind string into a :class:`Bind`.

    Args:
        text: e.g. ``"127.0.0.1:8000"``, ``"admin=unix:/run/app.sock"``.

    Returns:
        The parsed, frozen value.

    Raises:
        BindError: naming the string and what is wrong with it.
    """
    if not isinstance(text, str):
        raise BindError(f"invalid bind {text!r}: expected a string like '127.0.0.1:8000'")
    name, rest = _split_name(text)
    try:
        address = _parse_address(rest)
    except _Invalid as exc:
        raise BindError(f"invalid bind {text!r}: {exc}") from None
    return Bind(address=address, name=name)


class _Invalid(Exception):
    pass


def _split_name(text: str) -> tuple[str | None, str]:
    head, sep, tail = text.partition("=")
    if not sep or not re.fullmatch(r"[^:/\[\]@]+", head):
        return None, text
    if not _NAME.fullmatch(head):
        raise BindError(
            f"invalid bind {text!r}: name {head!r} may use only letters, digits and _.-@+"
        )
    return head, tail


def _parse_address(text: str) -> Address:
    if not text:
        raise _Invalid("empty address; expected HOST:PORT, unix:PATH or fd://N")
    if text.startswith("unix:"):
        return _parse_unix(text[len("unix:") :])
    if text.startswith("fd://"):
        return _parse_fd(text[len("fd://") :])
    scheme, sep, rest = text.partition("://")
    if not sep:
        return _parse_tcp(text, socket.AF_UNSPEC)
    families = {"tcp": socket.AF_UNSPEC, "tcp4": socket.AF_INET, "tcp6": socket.AF_INET6}
    if scheme not in families:
        raise _Invalid(f"unknown scheme {scheme + '://'!r}; use tcp://, tcp4://, tcp6://, fd://")
    return _parse_tcp(rest, families[scheme])


def _parse_unix(path: str) -> UnixAddress:
    abstract = path.startswith("@")
    if abstract:
        path = path[1:]
    if not path:
        raise _Invalid("empty unix socket path")
    if "\0" in path:
        raise _Invalid("unix socket path contains a NUL byte")
    size = len(path.encode("utf-8", "surrogateescape")) + (1 if abstract else 0)
    if size > _UNIX_PATH_MAX:
        raise _Invalid(f"unix socket path is {size} bytes, the limit is {_UNIX_PATH_MAX}")
    return UnixAddress(path=path, abstract=abstract)


def _parse_fd(text: str) -> FdAddress:
    if not text.isdigit() or not text.isascii():
        raise _Invalid("fd must be a non-negative integer, as in fd://3")
    return FdAddress(fd=int(text))


def _parse_tcp(text: str, family: socket.AddressFamily) -> TcpAddress:
    host, port_text = _split_host_port(text)
    port = _parse_port(port_text)
    if host == "":
        host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    literal = _literal_family(host)
    if literal is not None:
        if family not in (socket.AF_UNSPEC, literal):
            wanted = "IPv4" if family == socket.AF_INET else "IPv6"
            raise _Invalid(f"{host!r} is not an {wanted} address")
        family = literal
    elif not _is_hostname(host):
        raise _Invalid(f"{host!r} is neither an IP address nor a host name")
    return TcpAddress(host=host, port=port, family=family)


def _split_host_port(text: str) -> tuple[str, str]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _Invalid("missing ']' after the IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise _Invalid("expected ':PORT' after ']'")
        if _literal_family(host) != socket.AF_INET6:
            raise _Invalid(f"{host!r} inside [] is not an IPv6 address")
        return host, rest[1:]
    host, sep, port = text.rpartition(":")
    if not sep:
        raise _Invalid("missing ':PORT'")
    if ":" in host:
        raise _Invalid("an IPv6 address must be written in brackets, as in [::1]:8000")
    return host, port


def _parse_port(text: str) -> int:
    if not text:
        raise _Invalid("missing port")
    if not (text.isascii() and text.isdigit()):
        raise _Invalid(f"port {text!r} is not a number")
    port = int(text)
    if not 0 <= port <= 65535:
        raise _Invalid("port must be 1-65535 (or 0 for any free port)")
    return port


def _literal_family(host: str) -> socket.AddressFamily | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _is_hostname(host: str) -> bool:
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(
        re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", label) for label in labels
    )
