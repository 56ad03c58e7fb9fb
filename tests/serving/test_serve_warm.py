"""Warm starts of gapless serve: generations forked by the fork server
(gapless.run.zygote, gapless.run.warm), and the rule that they never run stale code."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import threading
from pathlib import Path

import pytest
import uvicorn
from load import Wrk
from manager_harness import Manager
from prober import Prober
from serve_harness import APPS, gapless, reload, serving

from gapless.run.staleness import Snapshot

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")

WARM = r"generation {} started as pid (\d+) \(forked warm\)"


def _forkserver_ready(manager: Manager) -> int:
    return int(manager.wait_line(r"fork server ready \(pid (\d+)").group(1))


def _proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _answer(manager: Manager) -> str:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", manager.port, timeout=10)
    connection.request("GET", "/")
    body = connection.getresponse().read().decode()
    connection.close()
    return body


def test_generations_after_the_first_are_forked_warm_as_children_of_the_manager(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, "serve_app:app") as manager:
        _forkserver_ready(manager)
        reload(manager)
        pid = int(manager.wait_line(WARM.format(2)).group(1))
        ready = manager.wait_line(r"generation 2 ready after (\d+) ms")
        assert _answer(manager) == f"pid {pid}"  # the app was imported afresh, after the fork
        assert _proc_status(pid, "PPid") == manager.process.pid  # reaped by the manager
        assert os.getpgid(pid) == pid  # a group of its own, as a cold generation
        manager.wait_line(r"generation 1 \(pid \d+\) exited with code 0")
        generations = manager.status()["generations"]
        assert [(g["generation"], g["start"]) for g in generations] == [(2, "warm")]
        assert int(ready.group(1)) < 150, manager.log()
        reload(manager)
        manager.wait_line(WARM.format(3))


def test_a_warm_generation_that_fails_is_reported_and_the_old_one_serves_on(
    tmp_path: Path,
) -> None:
    (tmp_path / "flaky.py").write_text(
        "import os, pathlib\n"
        "if pathlib.Path('fail').exists():\n"
        "    raise RuntimeError('told to fail')\n"
        "from serve_app import app\n"
    )
    env = {"PYTHONPATH": str(APPS)}
    with serving(tmp_path, "flaky:app", env=env, cwd=tmp_path) as manager:
        _forkserver_ready(manager)
        (tmp_path / "fail").touch()
        result = gapless("reload", "--control", manager.control)
        assert result.returncode == 1
        assert "told to fail" in result.stderr, result.stderr
        manager.wait_line(WARM.format(2))
        manager.wait_line(r"generation 2 \(pid \d+\) exited with code 3")
        assert [g["generation"] for g in manager.status()["generations"]] == [1]
        (tmp_path / "fail").unlink()
        reload(manager)
        manager.wait_line(WARM.format(3))


def test_a_changed_module_of_the_server_stack_starts_the_next_generation_cold(
    tmp_path: Path,
) -> None:
    """A copy of uvicorn first on PYTHONPATH: the fork server imports it; editing one
    of its files makes the next generation start cold, and a new fork server follows."""
    site = tmp_path / "site"
    shutil.copytree(Path(uvicorn.__file__).parent, site / "uvicorn")
    env = {"PYTHONPATH": f"{site}{os.pathsep}{APPS}"}
    with serving(tmp_path, "serve_app:app", env=env) as manager:
        first = _forkserver_ready(manager)
        reload(manager)
        manager.wait_line(WARM.format(2))
        module = site / "uvicorn" / "protocols" / "http" / "h11_impl.py"
        module.write_text(module.read_text() + "\n# edited\n")
        reload(manager)
        cold = manager.wait_line(r"generation 3 starts cold: (.*)").group(1)
        assert cold == f"{module} changed on disk", cold
        line = manager.wait_line(r"generation 3 started as pid \d+.*").group(0)
        assert "warm" not in line
        second = _forkserver_ready(manager)
        assert second != first
        reload(manager)
        manager.wait_line(WARM.format(4))


def test_gapless_reload_cold_starts_cold_then_a_new_fork_server(tmp_path: Path) -> None:
    with serving(tmp_path, "serve_app:app") as manager:
        first = _forkserver_ready(manager)
        result = gapless("reload", "--cold", "--control", manager.control)
        assert result.returncode == 0, result.stderr
        line = manager.wait_line(r"generation 2 started as pid \d+.*").group(0)
        assert "warm" not in line
        manager.wait_line(r"generation 1 \(pid \d+\) exited with code 0")
        assert [g["start"] for g in manager.status()["generations"]] == ["cold"]
        assert _forkserver_ready(manager) != first
        reload(manager)
        manager.wait_line(WARM.format(3))


def test_a_killed_fork_server_means_one_cold_start_then_a_new_one(tmp_path: Path) -> None:
    with serving(tmp_path, "serve_app:app") as manager:
        os.kill(_forkserver_ready(manager), signal.SIGKILL)
        manager.wait_line(r"warning.*the fork server exited|the fork server exited")
        reload(manager)
        manager.wait_line(r"generation 2 starts cold: the fork server exited")
        _forkserver_ready(manager)
        reload(manager)
        manager.wait_line(WARM.format(3))


def test_a_stopped_fork_server_costs_one_answer_timeout_and_leaves_no_generation(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, "serve_app:app") as manager:
        stopped = _forkserver_ready(manager)
        pidfd = os.pidfd_open(stopped)
        os.kill(stopped, signal.SIGSTOP)
        reload(manager)
        manager.wait_line(r"generation 2 starts cold: the fork server did not answer")
        manager.wait_line(r"generation 1 \(pid \d+\) exited with code 0")
        assert [g["generation"] for g in manager.status()["generations"]] == [2]
        exited, _, _ = select.select([pidfd], [], [], 10)  # the manager SIGKILLed it
        os.close(pidfd)
        assert exited, "the stopped fork server still runs"


def test_the_first_generation_is_cold_and_no_fork_server_means_all_cold(tmp_path: Path) -> None:
    with serving(tmp_path, "serve_app:app", "--no-fork-server") as manager:
        reload(manager)
        manager.wait_line(r"generation 1 \(pid \d+\) exited with code 0")
        assert not any("fork server" in line for line in manager.lines)
        assert [g["start"] for g in manager.status()["generations"]] == ["cold"]


@needs_wrk
def test_warm_reloads_under_load_lose_nothing(tmp_path: Path) -> None:
    with serving(tmp_path, "serve_app:app") as manager:
        _forkserver_ready(manager)
        kept = Wrk(manager.port, tmp_path, connections=8)
        prober = Prober(manager.port, threads=2)
        for number in range(2, 7):
            reload(manager)
            manager.wait_line(WARM.format(number))
        for number in range(1, 6):
            manager.wait_line(rf"generation {number} \(pid \d+\) exited with code 0")
        results = {"keep-alive": kept.stop(), "prober": prober.stop()}
    for name, result in results.items():
        assert result.requests > 50, (name, result.requests)
        assert result.failed == 0, (name, result.failures, result.examples[:3])


# The stale-code rule, in this process ------------------------------------------


def test_the_snapshot_sees_each_kind_of_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "held_module.py"
    module.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("held_module")
    try:
        snapshot = Snapshot(site_dirs=[str(tmp_path)])
        env, cwd = dict(os.environ), os.getcwd()
        assert _without_threads(snapshot.changed(env, cwd)) is None
        assert _without_threads(snapshot.changed({**env, "NOTIFY_SOCKET": "/x"}, cwd)) is None
        assert "environment changed (PYTHONHASHSEED)" in str(
            snapshot.changed({**env, "PYTHONHASHSEED": "7"}, cwd)
        )
        assert "directory changed" in str(snapshot.changed(env, "/"))
        (tmp_path / "new_package.pth").write_text("")
        assert snapshot.changed(env, cwd) == f"{tmp_path} changed on disk"
        snapshot = Snapshot(site_dirs=[str(tmp_path)])
        module.write_text("X = 22\n")
        assert snapshot.changed(env, cwd) == f"{module} changed on disk"
    finally:
        del __import__("sys").modules["held_module"]


def _without_threads(reason: str | None) -> str | None:
    return None if reason is not None and re.fullmatch(r"\d+ threads run.*", reason) else reason


def test_a_running_thread_forbids_a_fork() -> None:
    snapshot = Snapshot()
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        reason = snapshot.changed(dict(os.environ), os.getcwd())
        assert re.fullmatch(r"\d+ threads run in the fork server", str(reason))
    finally:
        release.set()
        thread.join()


def test_after_gapless_upgrade_a_new_fork_server_serves_warm_starts(tmp_path: Path) -> None:
    with serving(tmp_path, "serve_app:app") as manager:
        first = _forkserver_ready(manager)
        result = gapless("upgrade", "--control", manager.control)
        assert result.returncode == 0, result.stderr
        manager.wait_line(rf"reaped orphan pid {first}: exited with code 0")
        assert _forkserver_ready(manager) != first
        reload(manager)
        manager.wait_line(WARM.format(2))


@needs_wrk
def test_granian_generations_fork_warm_and_lose_nothing(tmp_path: Path) -> None:
    pytest.importorskip("granian")
    with serving(tmp_path, "serve_app:app", "--server", "granian") as manager:
        _forkserver_ready(manager)
        kept = Wrk(manager.port, tmp_path, connections=8)
        prober = Prober(manager.port, threads=2)
        for number in range(2, 5):
            reload(manager)
            manager.wait_line(WARM.format(number))
        for number in range(1, 4):
            manager.wait_line(rf"generation {number} \(pid \d+\) exited with code 0")
        results = {"keep-alive": kept.stop(), "prober": prober.stop()}
    for name, result in results.items():
        assert result.requests > 50, (name, result.requests)
        assert result.failed == 0, (name, result.failures, result.examples[:3])
