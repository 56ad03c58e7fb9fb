"""The handoff socket (gapless.sockets.handoff): sockets and their names pass between two
processes over SCM_RIGHTS, 253 at most per message, between peers of one uid."""

from __future__ import annotations

import os
import select
import socket
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from gapless.errors import HandoffError
from gapless.sockets.handoff import MAX_FDS_PER_MESSAGE, HandoffServer, HandoffSession, chunks
from gapless.sockets.takeover import take_sockets

TIMEOUT = 10.0


def wait_readable(fileno: int) -> None:
    assert select.select([fileno], [], [], TIMEOUT)[0], "nothing to read in time"


def accept(server: HandoffServer) -> HandoffSession:
    wait_readable(server.fileno())
    session = server.accept()
    assert session is not None
    return session


def next_request(session: HandoffSession) -> str | None:
    wait_readable(session.fileno())
    return session.receive()


class Holder(threading.Thread):
    """The running side: passes ``items`` to one client and records its requests."""

    def __init__(self, server: HandoffServer, items: list[tuple[str, socket.socket]]) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.items = items
        self.requests: list[str | None] = []

    def run(self) -> None:
        wait_readable(self.server.fileno())
        session = self.server.accept()
        if session is None:
            return  # refused
        with session.sock:
            while (request := next_request(session)) is not None:
                self.requests.append(request)
                if request == "take":
                    session.send_sockets(self.items)
                elif request == "retire":
                    session.acknowledge_retire()
            self.requests.append(None)


def same_socket(a: socket.socket, b: socket.socket) -> bool:
    left, right = os.fstat(a.fileno()), os.fstat(b.fileno())
    return (left.st_dev, left.st_ino) == (right.st_dev, right.st_ino)


def listener(family: socket.AddressFamily = socket.AF_INET, path: str = "") -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(path or ("127.0.0.1", 0))
    sock.listen()
    return sock


def test_chunks_hold_at_most_253_and_an_empty_offer_is_one_empty_message() -> None:
    items = [(str(i), None) for i in range(600)]
    parts = chunks(items)  # type: ignore[arg-type]
    assert [len(part) for part in parts] == [253, 253, 94]
    assert [name for part in parts for name, _ in part] == [str(i) for i in range(600)]
    assert chunks([]) == [[]]


def test_nobody_serving_the_path_means_none_so_the_caller_binds(tmp_path: Path) -> None:
    assert take_sockets(str(tmp_path / "missing.sock")) is None
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()  # the file stays, nobody listens
    assert take_sockets(str(tmp_path / "stale.sock")) is None
    server = HandoffServer(str(tmp_path / "stale.sock"))  # replaces the stale file
    server.close()
    assert not (tmp_path / "stale.sock").exists()


def test_the_very_sockets_pass_with_their_names_and_retire_is_acknowledged(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "app.handoff")
    server = HandoffServer(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    tcp, unix = listener(), listener(socket.AF_UNIX, str(tmp_path / "web.sock"))
    holder = Holder(server, [("listen:web", tcp), ("listen:", unix)])
    holder.start()
    taken = take_sockets(path, timeout=TIMEOUT)
    assert taken is not None
    assert taken.holder_pid == os.getpid()
    assert [name for name, _ in taken.sockets] == ["listen:web", "listen:"]
    assert same_socket(taken.sockets[0][1], tcp) and same_socket(taken.sockets[1][1], unix)
    # What was received is a working listener: a connection to it is accepted on it.
    with socket.create_connection(tcp.getsockname(), timeout=TIMEOUT):
        taken.sockets[0][1].settimeout(TIMEOUT)
        taken.sockets[0][1].accept()[0].close()
    taken.retire(timeout=TIMEOUT)
    taken.close()
    holder.join(TIMEOUT)
    assert holder.requests == ["take", "retire", None]
    for _, sock in taken.sockets:
        sock.close()
    tcp.close()
    unix.close()
    server.close()


def test_more_than_253_sockets_arrive_all_in_order(tmp_path: Path) -> None:
    path = str(tmp_path / "app.handoff")
    server = HandoffServer(path)
    items = [(f"s{i}", socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for i in range(300)]
    holder = Holder(server, items)
    holder.start()
    taken = take_sockets(path, timeout=TIMEOUT)
    assert taken is not None
    assert len(items) > MAX_FDS_PER_MESSAGE
    assert [name for name, _ in taken.sockets] == [name for name, _ in items]
    assert all(same_socket(a, b) for (_, a), (_, b) in zip(taken.sockets, items, strict=True))
    taken.close()
    holder.join(TIMEOUT)
    assert holder.requests == ["take", None]  # left without retire: the holder just goes on
    for _, sock in taken.sockets + items:
        sock.close()
    server.close()


def test_a_live_handoff_socket_is_never_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "app.handoff")
    server = HandoffServer(path)
    with pytest.raises(HandoffError, match="another instance serves handoff socket"):
        HandoffServer(path)
    server.own_path(False)  # as after a handoff: the path is the next instance's now
    server.close()
    assert (tmp_path / "app.handoff").exists()


def test_a_malformed_request_is_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "app.handoff")
    server = HandoffServer(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client:
        client.connect(path)
        session = accept(server)
        client.send(b'{"v": 1, "op": "steal"}')
        with pytest.raises(HandoffError, match="unknown handoff request 'steal'"):
            next_request(session)
        client.send(b"not json")
        with pytest.raises(HandoffError, match="is not JSON"):
            next_request(session)
        session.close()
    server.close()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
def test_a_peer_of_another_uid_gets_nothing() -> None:
    # Not under tmp_path: pytest's base directory is 0700, the other user must reach the file.
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o755)
        refuse_another_uid(os.path.join(directory, "app.handoff"))


def refuse_another_uid(path: str) -> None:
    server = HandoffServer(path)
    tcp = listener()
    holder = Holder(server, [("listen:web", tcp)])
    holder.start()
    os.chmod(path, 0o666)  # past the file mode, the uid check still refuses
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other user's process
        os.close(read)
        os.setuid(65534)
        try:
            take_sockets(path, timeout=TIMEOUT)
            outcome = b"got sockets"
        except HandoffError as exc:
            outcome = str(exc).encode()
        os.write(write, outcome)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        outcome = answer.read().decode()
    os.waitpid(pid, 0)
    assert "uid 65534 may not exchange sockets with uid 0" in outcome
    holder.join(TIMEOUT)
    assert holder.requests == []  # refused before any request
    tcp.close()
    server.close()
