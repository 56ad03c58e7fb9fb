"""Library mode keeping its PID (Upgrader(keep_pid=True), gapless.library.keeper): the started
process stays the one systemd, a PID file and signals follow, across upgrades."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from harness import Reply, Supervised, alive, app_argv, get, start, wait_exit
from manager_harness import Prober

from gapless.systemd.notify_receiver import Notification

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(item) for item in text.split()]


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@contextmanager
def kept(
    tmp_path: Path, **settings: object
) -> Iterator[tuple[Supervised, int, list[Notification]]]:
    """The app with keep_pid under a systemd-like notify socket; every notification
    it received is recorded. Yields (server, port, notifications)."""
    port = free_port()
    config = {"binds": [f"127.0.0.1:{port}"], "keep_pid": True, **settings}
    server = start(app_argv(tmp_path / "app.json", config))
    seen: list[Notification] = []
    try:
        yield server, port, seen
    finally:
        keeper = server.process.pid
        if alive(keeper):
            for child in children(keeper):
                with suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
        server.stop()


def wait_note(
    server: Supervised, seen: list[Notification], accept: Callable[[Notification], bool]
) -> Notification:
    """The next notification ``accept`` takes; every one read is kept in ``seen``."""
    return server.wait_notify(lambda note: bool(seen.append(note) or accept(note)))


def slow_request(port: int, into: list[Reply]) -> None:
    into.append(get(port, "/?duration=0.5s"))


def upgrade(server: Supervised, port: int, seen: list[Notification]) -> tuple[int, int]:
    """HUP the keeper; wait for systemd's RELOADING=1 then READY=1, both from the
    keeper, and for the old version to exit. Returns (old, new) version pids."""
    keeper = server.process.pid
    old = children(keeper)[0]
    os.kill(keeper, signal.SIGHUP)
    wait_note(server, seen, lambda note: note.reloading)
    wait_note(server, seen, lambda note: note.ready)
    assert wait_exit(old), "the old version did not exit"
    new = get(port).pid
    assert new is not None and new != old
    assert parent(new) == keeper, "the orphaned successor must be the keeper's child now"
    return old, new


def test_the_started_pid_stays_across_upgrades_and_is_all_systemd_sees(tmp_path: Path) -> None:
    pid_file = tmp_path / "app.pid"
    with kept(tmp_path, pid_file=str(pid_file)) as (server, port, seen):
        keeper = server.process.pid
        assert pid_file.read_text() == f"{keeper}\n"
        versions = children(keeper)
        assert len(versions) == 1 and get(port).pid == versions[0] != keeper
        with Prober(port) as prober:
            for _ in range(3):
                slow: list[Reply] = []
                thread = threading.Thread(target=slow_request, args=(port, slow), daemon=True)
                thread.start()
                prober.wait_answers(prober.answered + 1)
                _, new = upgrade(server, port, seen)
                versions.append(new)
                thread.join(30)
                assert slow and slow[0].status == 200, slow
                assert pid_file.read_text() == f"{keeper}\n"
        assert prober.failures == []
        assert len(set(versions)) == 4 and keeper not in versions
        assert all(note.pid == keeper for note in seen), "systemd heard a pid other than the kept"
        assert not any("MAINPID" in note.fields for note in seen)
        os.kill(keeper, signal.SIGTERM)
        assert server.process.wait(30) == 0
        assert not alive(versions[-1])
        assert not pid_file.exists()


def test_a_failed_upgrade_changes_nothing(tmp_path: Path) -> None:
    with kept(tmp_path) as (server, port, seen):
        keeper = server.process.pid
        (version,) = children(keeper)
        app_argv(tmp_path / "app.json", {"binds": [f"127.0.0.1:{port}"], "fail": "exit"})
        os.kill(keeper, signal.SIGHUP)
        failed = wait_note(server, seen, lambda note: "upgrade failed" in (note.status or ""))
        assert failed.pid == keeper
        assert children(keeper) == [version]
        assert get(port).pid == version


def test_the_keeper_exits_with_the_last_versions_status(tmp_path: Path) -> None:
    with kept(tmp_path) as (server, _, _):
        (version,) = children(server.process.pid)
        os.kill(version, signal.SIGKILL)
        assert server.process.wait(30) == 128 + signal.SIGKILL
