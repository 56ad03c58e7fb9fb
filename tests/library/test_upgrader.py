"""Library mode with real processes: upgrades, failed successors, drains, systemd."""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import APPS, Reply, alive, app_argv, get, start, wait_exit

from gapless import (
    HookError,
    SuccessorExitedError,
    SuccessorSpawnError,
    SuccessorTimeoutError,
    Upgrader,
    UpgradeRefusedError,
)
from gapless.sockets.listeners import listener_address

pytestmark = pytest.mark.timeout(90)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_of(sock: socket.socket) -> int:
    address = listener_address(sock)
    assert not isinstance(address, str)
    return int(address.port)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return tmp_path / "app.json"


# The demo's own scenario ---------------------------------------------------


def test_demo_scenario_slow_request_finishes_on_old_pid_while_new_pid_serves() -> None:
    port = free_port()
    server = start([sys.executable, "-m", "gapless.demo", "--bind", f"127.0.0.1:{port}"])
    old = server.main_pid
    try:
        slow: list[object] = []
        slow_thread = send_slow_request(port, "3s", slow)
        signalled = time.monotonic()
        new = server.upgrade()
        assert new != old
        assert alive(old) and alive(new), "both generations must be alive at one point"
        quick = [get(port) for _ in range(20)]
        assert [r.error for r in quick] == [None] * 20
        assert {r.pid for r in quick} == {new}
        slow_thread.join(30)
        (reply,) = slow
        assert reply.error is None and reply.pid == old
        finished = time.monotonic()
        assert wait_exit(old, 10)
        # The old process leaves as soon as its last request is done.
        assert time.monotonic() - finished < 1.5
        assert finished - signalled >= 2.0  # the slow request really spanned the upgrade
    finally:
        server.stop()


def send_slow_request(port: int, duration: str, into: list[object]) -> threading.Thread:
    """Send a slow request; return once the server is on it (the demo sends its
    headers at once and the body after ``duration``), with a thread reading the rest."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", f"/?duration={duration}")
    response = connection.getresponse()

    def finish() -> None:
        try:
            into.append(Reply(response.status, response.read().decode()))
        except (OSError, http.client.HTTPException) as exc:
            into.append(Reply(None, "", f"{type(exc).__name__}: {exc}"))
        finally:
            connection.close()

    thread = threading.Thread(target=finish, daemon=True)
    thread.start()
    return thread


# upgrade() from Python, in this process --------------------------------------


@pytest.fixture
def upgrader(tmp_path: Path) -> Iterator[Upgrader]:
    environ = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    up = Upgrader(environ=environ, ready_timeout=2.0, drain_timeout=-1)
    yield up
    up.close()


def configured(up: Upgrader, config: Path, **settings: object) -> None:
    binds = [f"127.0.0.1:{port_of(sock)}" for sock in up.listeners]
    up.command = app_argv(config, {"binds": binds, **settings})


def test_failed_successor_reports_exit_code_and_stderr_and_we_keep_serving(
    upgrader: Upgrader, config: Path
) -> None:
    sock = upgrader.listen("127.0.0.1:0")
    upgrader.ready()
    configured(upgrader, config, fail="exit")
    with pytest.raises(SuccessorExitedError) as info:
        upgrader.upgrade()
    assert info.value.returncode == 3
    assert "boom: this version cannot start" in info.value.stderr_tail
    assert "exited with code 3" in str(info.value)
    assert "\n" not in str(info.value)
    assert not upgrader.stopping
    assert_still_listening(sock)


def test_successor_that_never_gets_ready_is_killed_at_the_timeout(
    upgrader: Upgrader, config: Path
) -> None:
    sock = upgrader.listen("127.0.0.1:0")
    upgrader.ready()
    configured(upgrader, config, fail="hang")
    started = time.monotonic()
    with pytest.raises(SuccessorTimeoutError, match="did not report READY=1 within 2 s") as info:
        upgrader.upgrade()
    assert 1.9 < time.monotonic() - started < 6
    assert not alive(info.value.pid)
    assert "stuck before ready" in info.value.stderr_tail
    assert_still_listening(sock)


@pytest.mark.parametrize("command", [["/nonexistent/server"], ["not-a-command-anywhere"]])
def test_missing_successor_command(upgrader: Upgrader, command: list[str]) -> None:
    upgrader.listen("127.0.0.1:0")
    upgrader.ready()
    upgrader.command = command
    with pytest.raises(SuccessorSpawnError, match=re.escape(command[0])):
        upgrader.upgrade()
    assert not upgrader.stopping


def test_successor_command_not_executable(upgrader: Upgrader, tmp_path: Path) -> None:
    script = tmp_path / "server.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    upgrader.listen("127.0.0.1:0")
    upgrader.ready()
    upgrader.command = [str(script)]
    with pytest.raises(SuccessorSpawnError, match="not executable"):
        upgrader.upgrade()


def test_upgrade_succeeds_after_failures_and_concurrent_calls_join(
    upgrader: Upgrader, config: Path
) -> None:
    sock = upgrader.listen("127.0.0.1:0")
    upgrader.ready()
    configured(upgrader, config, fail="exit")
    with pytest.raises(SuccessorExitedError):
        upgrader.upgrade()
    configured(upgrader, config)
    results: list[int] = []
    callers = [
        threading.Thread(target=lambda: results.append(upgrader.upgrade())) for _ in range(5)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(30)
    try:
        assert len(results) == 5 and len(set(results)) == 1, "one successor for all five calls"
        assert upgrader.wait_stopping(0)
        assert get(port_of(sock)).pid == results[0]
        with pytest.raises(UpgradeRefusedError, match="draining"):
            upgrader.upgrade()
    finally:
        for pid in set(results):
            kill_child(pid)


def kill_child(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def assert_still_listening(sock: socket.socket) -> None:
    with socket.create_connection(("127.0.0.1", port_of(sock)), timeout=5):
        pass
    conn, _ = sock.accept()
    conn.close()


def test_scoped_signal_handlers_are_restored() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR2, signal.SIGTERM)}
    environ = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    with Upgrader(environ=environ, signals={"USR2": "upgrade", "TERM": "stop"}):
        assert signal.getsignal(signal.SIGUSR2) is not before[signal.SIGUSR2]
        assert signal.getsignal(signal.SIGHUP) is before[signal.SIGHUP]
    assert {s: signal.getsignal(s) for s in before} == before


def test_stop_signal_in_this_process_sets_the_stopping_event() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    with Upgrader(environ=environ, signals={"USR1": "stop"}, drain_timeout=-1) as up:
        up.listen("127.0.0.1:0")
        up.ready()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert up.wait_stopping(10)


# Whole processes: ports, unix paths, PID files, systemd, deadlines ------------


def test_changing_ports_across_an_upgrade(config: Path) -> None:
    first, second = free_port(), free_port()
    server = start(app_argv(config, {"binds": [f"127.0.0.1:{first}"]}))
    try:
        app_argv(config, {"binds": [f"127.0.0.1:{second}"]})
        old, new = server.main_pid, server.upgrade()
        assert get(second).pid == new
        assert wait_exit(old)
        assert get(first).error is not None, "the old port closes with the old process"
    finally:
        server.stop()


def test_named_port_zero_bind_is_inherited_by_name(config: Path) -> None:
    server = start(app_argv(config, {"binds": ["web=127.0.0.1:0"]}))
    try:
        port = listening_ports(server.main_pid)[0]
        new = server.upgrade()
        assert get(port).pid == new
        assert listening_ports(new) == [port]
    finally:
        server.stop()


def listening_ports(pid: int) -> list[int]:
    inodes = {
        os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1]
        for fd in os.listdir(f"/proc/{pid}/fd")
        if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")
    }
    ports = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:
            ports.append(int(fields[1].split(":")[1], 16))
    return sorted(ports)


def test_unix_path_survives_the_upgrade_and_goes_at_final_stop(
    tmp_path: Path, config: Path
) -> None:
    path = tmp_path / "app.sock"
    server = start(app_argv(config, {"binds": [f"unix:{path}"]}))
    try:
        old, new = server.main_pid, server.upgrade()
        assert wait_exit(old)
        assert path.exists(), "the old process must not unlink a path its successor serves"
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert f"pid {new}".encode() in client.makefile("rb").read()
        os.kill(new, signal.SIGTERM)
        assert wait_exit(new)
        assert not path.exists(), "the last process removes its unix socket path"
    finally:
        server.stop()


def test_pid_file_names_the_process_to_signal(tmp_path: Path, config: Path) -> None:
    pid_file = tmp_path / "app.pid"
    server = start(app_argv(config, {"binds": ["127.0.0.1:0"], "pid_file": str(pid_file)}))
    try:
        assert pid_file.read_text() == f"{server.main_pid}\n"
        old, new = server.main_pid, server.upgrade()
        assert wait_exit(old)
        assert pid_file.read_text() == f"{new}\n", "the old process must not remove it"
        os.kill(new, signal.SIGTERM)
        assert wait_exit(new)
        assert not pid_file.exists()
    finally:
        server.stop()


def test_systemd_sees_reloading_then_the_new_main_pid_then_stopping(config: Path) -> None:
    server = start(app_argv(config, {"binds": ["127.0.0.1:0"]}))
    try:
        old = server.main_pid
        os.kill(old, signal.SIGHUP)
        reloading = server.wait_notify(lambda m: m.reloading)
        assert reloading.pid == old
        usec = int(reloading.fields["MONOTONIC_USEC"])
        assert abs(usec - time.monotonic_ns() // 1000) < 30_000_000
        handover = server.wait_notify(lambda m: m.ready)
        assert handover.pid == old and handover.mainpid not in (None, old)
        new = handover.mainpid
        assert new is not None
        server.pids.append(new)
        assert wait_exit(old)
        os.kill(new, signal.SIGTERM)
        stopping = server.wait_notify(lambda m: m.stopping)
        assert stopping.pid == new, "the successor speaks to systemd itself"
    finally:
        server.stop()


def test_drain_timeout_ends_a_drain_that_takes_too_long(config: Path) -> None:
    server = start(app_argv(config, {"binds": ["127.0.0.1:0"], "drain_timeout": 1.0}))
    try:
        port = listening_ports(server.main_pid)[0]
        old = server.main_pid
        send_slow_request(port, "60s", [])
        server.upgrade()
        ready = time.monotonic()
        assert wait_exit(old, 10)
        assert 0.8 < time.monotonic() - ready < 2.5
    finally:
        server.stop()


def test_second_term_stops_at_once(config: Path) -> None:
    server = start(app_argv(config, {"binds": ["127.0.0.1:0"]}))
    try:
        port = listening_ports(server.main_pid)[0]
        pid = server.main_pid
        send_slow_request(port, "60s", [])
        os.kill(pid, signal.SIGTERM)
        assert not wait_exit(pid, 0.5), "the first TERM drains"
        os.kill(pid, signal.SIGTERM)
        assert wait_exit(pid, 5), "the second TERM exits at once"
    finally:
        server.stop()


def test_asyncio_server_upgrades(tmp_path: Path) -> None:
    port = free_port()
    server = start([sys.executable, str(APPS / "async_upgradable.py"), f"127.0.0.1:{port}"])
    try:
        old, new = server.main_pid, server.upgrade()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"hello\n")
            assert client.makefile().readline() == f"pid {new}\n"
        assert wait_exit(old)
    finally:
        server.stop()


def test_hooks_run_in_order_and_before_upgrade_can_veto(upgrader: Upgrader, config: Path) -> None:
    calls: list[object] = []
    upgrader.hooks.on_ready.append(lambda: calls.append("ready"))
    upgrader.hooks.before_upgrade.append(lambda: calls.append("before_upgrade"))
    upgrader.hooks.after_upgrade.append(lambda pid: calls.append(("after_upgrade", pid)))
    upgrader.hooks.before_shutdown.append(lambda: calls.append("before_shutdown"))
    upgrader.hooks.after_shutdown.append(lambda: calls.append("after_shutdown"))
    upgrader.listen("127.0.0.1:0")
    upgrader.ready()
    configured(upgrader, config)

    def veto() -> None:
        raise RuntimeError("migrations pending")

    upgrader.hooks.before_upgrade.append(veto)
    with pytest.raises(HookError, match="refused: migrations pending"):
        upgrader.upgrade()
    assert not upgrader.stopping
    upgrader.hooks.before_upgrade.remove(veto)
    pid = asyncio.run(upgrader.upgrade_async())
    try:
        upgrader.close()
        assert calls == [
            "ready",
            "before_upgrade",
            "before_upgrade",
            "before_shutdown",
            ("after_upgrade", pid),
            "after_shutdown",
        ]
    finally:
        kill_child(pid)


def test_successor_takes_over_the_original_stderr_once_ready(tmp_path: Path, config: Path) -> None:
    log_file = tmp_path / "stderr.log"
    with log_file.open("w") as stderr:
        server = start(app_argv(config, {"binds": ["127.0.0.1:0"]}), stderr=stderr)
    try:
        old, new = server.main_pid, server.upgrade()
        assert wait_exit(old)
        assert os.readlink(f"/proc/{new}/fd/2") == str(log_file)
        os.kill(new, signal.SIGTERM)
        assert wait_exit(new)
        text = log_file.read_text()
        assert f"app[{new}] listening on" in text, "lines before READY are forwarded"
        assert f"app[{new}] SIGTERM: stopping" in text, "lines after the old exit still arrive"
    finally:
        server.stop()


# drain_timeout, named as gapless run's --drain-timeout ------------------------


def test_drain_timeout_is_the_drain_deadline() -> None:
    up = Upgrader(environ={}, drain_timeout=5.0)
    try:
        assert up.drain_timeout == 5.0
    finally:
        up.close()


def test_hammer_time_is_still_accepted_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match=r"hammer_time=.*drain_timeout=") as caught:
        up = Upgrader(environ={}, hammer_time=-1)
    try:
        assert up.drain_timeout == -1
        assert caught[0].filename == __file__, "the warning points at the caller's line"
    finally:
        up.close()


def test_hammer_time_and_drain_timeout_together_are_refused() -> None:
    with pytest.raises(TypeError, match=r"hammer_time.*drain_timeout"):
        Upgrader(environ={}, hammer_time=1.0, drain_timeout=2.0)
