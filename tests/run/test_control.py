"""The control socket with real unix sockets: paths, permissions, peer checks,
the command table and the client."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gapless.errors import ControlError, NoManagerError
from gapless.run.control import (
    CommandTable,
    ControlConnection,
    ControlServer,
    call,
    control_directory,
    default_control_path,
    ensure_private_directory,
    progress,
    reply,
)

TIMEOUT = 10.0


class Serving:
    """A ControlServer answered by a selector loop in a thread, as the manager does."""

    def __init__(self, path: str, table: CommandTable) -> None:
        self.server = ControlServer(path)
        self.table = table
        self._wake_read, self._wake_write = socket.socketpair()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.server, selectors.EVENT_READ, None)
            selector.register(self._wake_read, selectors.EVENT_READ, "stop")
            while True:
                for key, _ in selector.select():
                    if key.data == "stop":
                        return
                    if key.data is None:
                        connection = self.server.accept()
                        if connection is not None:
                            selector.register(connection, selectors.EVENT_READ, connection)
                        continue
                    lines = key.data.read_lines()
                    if lines is None:
                        selector.unregister(key.data)
                        key.data.close()
                        continue
                    for line in lines:
                        self.table.dispatch(key.data, line)

    def close(self) -> None:
        self._wake_write.send(b"x")
        self._thread.join(TIMEOUT)
        self.server.close()
        self._wake_read.close()
        self._wake_write.close()


@pytest.fixture
def table() -> CommandTable:
    table = CommandTable()

    def echo(connection: ControlConnection, request: dict[str, Any]) -> None:
        connection.send(progress("working"))
        connection.send(reply(True, echo=request.get("text"), uid=connection.uid))

    def text_problem(value: object) -> str | None:
        return None if isinstance(value, str) else f'"text" must be a string, not {value!r}'

    table.register("echo", "answer with the text sent", echo, {"text": text_problem})
    return table


@pytest.fixture
def serving(tmp_path: Path, table: CommandTable) -> Iterator[Serving]:
    serving = Serving(str(tmp_path / "control.sock"), table)
    yield serving
    serving.close()


def test_a_command_answers_with_progress_then_a_final_line(serving: Serving) -> None:
    seen: list[str] = []
    answer = call(serving.server.path, "echo", on_progress=seen.append, text="hi")
    assert answer == {"v": 1, "ok": True, "echo": "hi", "uid": os.getuid()}
    assert seen == ["working"]


def test_help_lists_every_registered_command_with_its_help(serving: Serving) -> None:
    answer = call(serving.server.path, "help")
    assert answer["commands"] == {
        "echo": "answer with the text sent",
        "help": "list the commands and what they do",
    }


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b'{"v": 1, "cmd": "nope"}', "unknown command 'nope'; known: echo, help"),
        (b'{"v": 2, "cmd": "echo"}', "unsupported protocol version 2; this manager speaks 1"),
        (b'{"cmd": "echo"}', "unsupported protocol version None"),
        (b"not json", "is not JSON; send one object a line"),
        (b"[1, 2]", "a request must be a JSON object"),
        (b'{"v": 1}', 'a request needs "cmd"'),
        (b'{"v": true, "cmd": "echo"}', "unsupported protocol version True"),
        (b'{"v": 1.0, "cmd": "echo"}', "unsupported protocol version 1.0"),
        (b'{"v": 1, "cmd": "echo", "text": 5}', '"text" must be a string, not 5'),
    ],
)
def test_a_bad_request_gets_an_error_reply(serving: Serving, line: bytes, error: str) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(serving.server.path)
        sock.sendall(line + b"\n")
        answer = json.loads(sock.makefile("rb").readline())
    assert answer["ok"] is False
    assert error in answer["error"]


def test_the_socket_file_is_0600_and_removed_at_close(tmp_path: Path, table: CommandTable) -> None:
    path = tmp_path / "control.sock"
    serving = Serving(str(path), table)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    serving.close()
    assert not path.exists()


def test_a_second_server_on_the_same_path_is_refused(serving: Serving) -> None:
    with pytest.raises(ControlError, match="another gapless manager listens on"):
        ControlServer(serving.server.path)


def test_a_stale_socket_file_is_replaced(tmp_path: Path, table: CommandTable) -> None:
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a manager that was killed
    serving = Serving(str(path), table)
    try:
        assert call(str(path), "echo", text="x")["ok"]
    finally:
        serving.close()


def as_other_uid(path: str) -> dict[str, Any]:
    """Call ``echo`` from a forked child running as uid 12345; its answer or error."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            os.setuid(12345)
            answer = call(path, "echo", timeout=TIMEOUT)
            os.write(write_end, json.dumps(answer).encode())
        except BaseException as exc:
            os.write(write_end, json.dumps({"raised": str(exc)}).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        result: dict[str, Any] = json.loads(reader.read())
    os.waitpid(pid, 0)
    return result


def test_a_peer_of_another_uid_is_refused(table: CommandTable) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another uid")
    directory = tempfile.mkdtemp()  # pytest's own tmp dirs are 0700: uid 12345 could not enter
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "control.sock")
    serving = Serving(path, table)
    try:
        refused_by_mode = as_other_uid(path)
        os.chmod(path, 0o666)  # were the file opened up, the uid check still refuses
        refused_by_uid = as_other_uid(path)
    finally:
        serving.close()
        shutil.rmtree(directory)  # chmod changed the ctime: no longer "our" file to unlink
    assert refused_by_mode == {"raised": f"cannot reach the manager at {path}: Permission denied"}
    assert refused_by_uid == {
        "v": 1,
        "ok": False,
        "error": "permission denied: uid 12345 may not control a manager of uid 0",
    }


def test_no_manager_is_a_one_line_error_naming_the_path(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.sock")
    with pytest.raises(NoManagerError) as caught:
        call(path, "status")
    assert str(caught.value) == (
        f"no gapless manager at {path}: start one with gapless run, or pass --control"
    )


def test_the_default_path_is_derived_from_the_working_directory(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    here = default_control_path(str(tmp_path / "a"), env, 1000)
    assert here == default_control_path(str(tmp_path / "a"), env, 1000)
    assert here != default_control_path(str(tmp_path / "b"), env, 1000)
    assert os.path.dirname(here) == str(tmp_path / "gapless")
    assert os.path.basename(here).startswith("a-") and here.endswith(".sock")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert default_control_path(str(tmp_path / "link"), env, 1000) == here


@pytest.mark.parametrize(
    ("env", "uid", "directory"),
    [
        ({"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, "/run/user/1000/gapless"),
        ({}, 0, "/run/gapless"),
        ({}, 1000, "/tmp/gapless-1000"),
        ({"XDG_RUNTIME_DIR": "relative"}, 1000, "/tmp/gapless-1000"),
    ],
)
def test_the_control_directory_per_user(env: dict[str, str], uid: int, directory: str) -> None:
    assert control_directory(env, uid) == directory


def test_the_private_directory_is_created_0700_and_tightened(tmp_path: Path) -> None:
    path = tmp_path / "gapless"
    ensure_private_directory(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    path.chmod(0o755)
    ensure_private_directory(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_a_private_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to chown")
    path = tmp_path / "gapless"
    path.mkdir(mode=0o700)
    os.chown(path, 12345, 12345)
    with pytest.raises(ControlError, match="is not a directory owned by uid 0"):
        ensure_private_directory(str(path))


def test_a_default_path_server_creates_its_private_directory(
    tmp_path: Path, table: CommandTable
) -> None:
    runtime = tempfile.mkdtemp()  # short: pytest's tmp_path would not fit in sun_path
    path = default_control_path(str(tmp_path), {"XDG_RUNTIME_DIR": runtime})
    server = ControlServer(path, private_directory=True)
    try:
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        server.close()
        shutil.rmtree(runtime)
