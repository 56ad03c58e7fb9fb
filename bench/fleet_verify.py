"""Which release a host serves: one request straight to it, its ``X-App-Version``."""

from __future__ import annotations

import http.client

from gapless.errors import BenchError
from gapless.sockets.addresses import TcpAddress

__all__ = ["served_version"]


def served_version(address: TcpAddress, timeout: float) -> str:
    """The ``X-App-Version`` a ``GET /`` to ``address`` answers with.

    Raises:
        BenchError: no answer, or no such header.
    """
    connection = http.client.HTTPConnection(address.host, address.port, timeout=timeout)
    try:
        connection.request("GET", "/", headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        version = response.getheader("X-App-Version")
    except OSError as exc:
        raise BenchError(f"{address} did not answer GET /: {exc}") from None
    finally:
        connection.close()
    if version is None:
        raise BenchError(f"{address} answered with no X-App-Version header")
    return version
