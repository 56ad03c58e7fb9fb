"""Hostile bytes to a live manager's control socket, and peers of another uid.

Binary lines, JSON of every shape, versions and commands that do not exist,
lines too long or nested too deep, lines cut short by a hang-up: each complete
line gets one error reply, the manager never crashes, and ``gapless status``
stays the same while a prober sees no failure. A process of another uid is
refused by the socket's mode (0600) and, were the file opened up, by its uid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from manager_harness import TIMEOUT, Manager, Prober, app, running
from test_fuzz_notify import stable

from gapless.run.control import MAX_LINE

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
CHANGES_STATE = {"reload", "stop", "upgrade"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
versions = st.one_of(st.just(1), json_values)
commands = st.one_of(st.sampled_from(["help", "status", "Reload", "", "stop "]), json_values)
requests = st.builds(
    lambda extra, v, cmd: json.dumps({**extra, "v": v, "cmd": cmd}).encode(),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    versions,
    commands,
)
lines = st.one_of(
    st.binary(max_size=300), requests, json_values.map(lambda v: json.dumps(v).encode())
)
payloads = st.lists(lines, min_size=1, max_size=5).map(b"\n".join)


def exchange(path: str, payload: bytes) -> list[dict[str, Any]]:
    """Send ``payload``, hang up, and return every line the manager answered."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        answers: list[dict[str, Any]] = []
        # A hang-up on a line too long, with our bytes still unread, resets after.
        with sock.makefile("rb") as lines, contextlib.suppress(ConnectionResetError):
            answers += [json.loads(line) for line in lines]
        return answers


def complete_lines(payload: bytes) -> list[bytes]:
    """The lines the manager reads as requests: the last one, with no newline, is cut
    short by the hang-up and dropped."""
    return [line for line in payload.split(b"\n")[:-1] if line.strip()]


def harmless(line: bytes) -> bool:
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):
        return True
    return not (isinstance(request, dict) and str(request.get("cmd")) in CHANGES_STATE)


def test_hostile_requests_get_error_replies_and_change_nothing(tmp_path: Path) -> None:
    with running(tmp_path, app("fault_server.py"), "--ready", "notify") as manager:
        with Prober(manager.port) as prober:
            before = stable(manager.status())

            @settings(max_examples=200, deadline=None, database=None)
            @given(payload=payloads, newline=st.booleans())
            def fuzz(payload: bytes, newline: bool) -> None:
                payload += b"\n" if newline else b""
                wanted = complete_lines(payload)
                if not all(harmless(line) for line in wanted):
                    return
                answers = exchange(manager.control, payload)
                assert len(answers) == len(wanted), (payload, answers)
                for line, answer in zip(wanted, answers, strict=True):
                    assert answer["v"] == 1
                    if not answer["ok"]:
                        assert isinstance(answer["error"], str) and answer["error"], answer
                    else:  # only a well-formed help or status succeeds
                        assert json.loads(line)["cmd"] in ("help", "status")

            fuzz()
            assert_edge_cases_refused(manager)
            after = stable(manager.status())
            prober.wait_answers(prober.answered + 3)
        assert manager.process.poll() is None
    assert after == before
    assert prober.failures == []


def assert_edge_cases_refused(manager: Manager) -> None:
    nested = b"[" * (MAX_LINE - 100) + b"\n"  # the JSON decoder's recursion limit
    (answer,) = exchange(manager.control, nested)
    assert answer["error"].startswith("request b'[[[[")
    (answer,) = exchange(manager.control, b"x" * (MAX_LINE * 2))  # no newline, too long
    assert answer["error"] == f"request longer than {MAX_LINE} bytes; send one JSON object a line"
    (answer,) = exchange(manager.control, b'{"v": 2, "cmd": "status"}\n')
    assert answer["error"].startswith("unsupported protocol version 2")
    assert exchange(manager.control, b'{"v": 1, "cmd": "stop"}') == []  # cut short: dropped


ASK_TO_STOP = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"refused": e.strerror}))
    sys.exit()
try:
    s.sendall(b'{"v": 1, "cmd": "stop"}\\n')
except BrokenPipeError:
    pass  # refused and dropped at once: its answer waits all the same
print(s.makefile().readline())
"""


def as_nobody(path: str) -> dict[str, Any]:
    """What a process of uid 65534 gets when it asks the manager at ``path`` to stop."""
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", ASK_TO_STOP, path],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another uid")
def test_a_process_of_another_uid_is_refused_by_a_live_manager(tmp_path: Path) -> None:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"needs {SYSTEM_PYTHON} to run as another user")
    directory = tempfile.mkdtemp(prefix="gapless-uid-")  # one uid 65534 may enter
    os.chmod(directory, 0o755)
    control = os.path.join(directory, "control.sock")
    try:
        with running(tmp_path, app("fault_server.py"), "--control", control) as manager:
            manager.control = control
            before = stable(manager.status())
            by_mode = as_nobody(control)
            os.chmod(control, 0o666)  # were the file opened up, the uid check still refuses
            by_uid = as_nobody(control)
            after = stable(manager.status())
    finally:
        shutil.rmtree(directory)
    assert by_mode == {"refused": "Permission denied"}
    assert by_uid == {
        "v": 1,
        "ok": False,
        "error": f"permission denied: uid {NOBODY} may not control a manager of uid 0",
    }
    assert after == before


def test_upgrade_with_any_python_value_is_one_error_line_and_changes_nothing(
    tmp_path: Path,
) -> None:
    with running(tmp_path, app("fault_server.py"), "--ready", "notify") as manager:
        with Prober(manager.port) as prober:
            before = stable(manager.status())

            @settings(max_examples=100, deadline=None, database=None)
            @given(python=json_values | st.text().map(lambda text: "/" + text))
            def fuzz(python: Any) -> None:
                request = {"v": 1, "cmd": "upgrade", "python": python}
                (answer,) = exchange(manager.control, json.dumps(request).encode() + b"\n")
                assert answer["ok"] is False and answer["error"], answer
                assert "\n" not in answer["error"], answer

            fuzz()
            after = stable(manager.status())
            prober.wait_answers(prober.answered + 3)
        assert manager.process.poll() is None
    assert after == before
    assert prober.failures == []
