"""sock_diag: TCP connections by inode, without reading every TIME_WAIT row."""

from __future__ import annotations

import os
import socket

from gapless.sockets.sockdiag import tcp_connections


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def test_connections_are_found_by_inode_with_their_local_port_and_listeners_are_not() -> None:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as listener:
            listener.bind((host, 0))
            listener.listen()
            port = listener.getsockname()[1]
            with socket.create_connection((host, port)) as client:
                accepted, _ = listener.accept()
                with accepted:
                    found = tcp_connections()
                    assert found[inode(accepted)] == port
                    assert found[inode(client)] == client.getsockname()[1]
                    assert inode(listener) not in found
