"""``gapless run`` with real processes: handoff, reloads, failures, deadlines, reaping."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from pathlib import Path

from harness import alive, wait_exit
from manager_harness import DEMO, TIMEOUT, Prober, app, running, write_command

from gapless.systemd.notify_receiver import NotifyReceiver


def test_child_gets_listen_fds_names_pid_and_notify_socket(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    binds = ("web=127.0.0.1:0", "admin=127.0.0.1:0")
    with running(tmp_path, app("report_env.py", str(report)), binds=binds) as manager:
        got = json.loads(report.read_text())
        status = manager.status()
    env = got["env"]
    assert env["LISTEN_FDS"] == "2"
    assert env["LISTEN_FDNAMES"] == "web:admin"
    assert env["LISTEN_PID"] == str(got["pid"]) == str(status["generations"][0]["pid"])
    # A path in the private control directory, not an abstract name anyone may reach.
    assert re.fullmatch(r"/.+/notify-\d+-[0-9a-f]{8}\.sock", env["NOTIFY_SOCKET"])
    listeners = [item["address"] for item in status["listeners"]]
    assert [f"{host}:{port}" for host, port in got["sockets"]] == listeners


def test_reload_starts_the_next_generation_then_drains_the_old_with_no_failed_request(
    tmp_path: Path,
) -> None:
    with running(tmp_path, DEMO, "--drain-timeout", "5") as manager, Prober(manager.port) as prober:
        old = manager.status()["generations"][0]["pid"]
        answer = manager.call("reload")
        assert answer["ok"], answer
        assert answer["generation"] == 2
        new = manager.wait_line(r"generation 2 started as pid (\d+)").group(1)
        prober.wait_answer_from(int(new))
        assert wait_exit(old)
        manager.wait_line(rf"generation 1 \(pid {old}\) exited with code 0")
    assert prober.failures == []
    assert {old, int(new)} <= prober.pids


def test_failed_reload_reports_exit_code_and_stderr_while_the_old_one_serves(
    tmp_path: Path,
) -> None:
    command = tmp_path / "command.json"
    with running(tmp_path, write_command(command, DEMO)) as manager, Prober(manager.port) as prober:
        write_command(command, app("exit3.py"))
        answer = manager.call("reload")
        prober.wait_answers(prober.answered + 3)  # and it still serves after
        status = manager.status()
    assert not answer["ok"]
    assert "generation 2 exited with code 3 before it was ready" in answer["error"]
    assert "ImportError: cannot import name 'broken' from 'app'" in answer["stderr"]
    assert [g["generation"] for g in status["generations"]] == [1]
    assert status["generations"][0]["state"] == "active"
    assert status["last_reload"]["ok"] is False
    assert prober.failures == []


def test_sighup_reloads_without_a_client_waiting(tmp_path: Path) -> None:
    with running(tmp_path, DEMO) as manager:
        manager.signal(signal.SIGHUP)
        manager.wait_line(r"reload requested by SIGHUP")
        manager.wait_line(r"generation 2 ready after \d+ ms")
        manager.wait_line(r"generation 1 draining: sent SIGTERM")


def test_a_storm_of_100_hups_starts_at_most_two_generations(tmp_path: Path) -> None:
    with NotifyReceiver() as receiver:
        env = {**os.environ, "NOTIFY_SOCKET": receiver.address}
        with running(tmp_path, DEMO, env=env) as manager:
            _next_note(receiver, lambda f: "READY" in f)
            for _ in range(100):
                os.kill(manager.process.pid, signal.SIGHUP)
            # READY=1 again only once no start is under way or queued: the storm is over.
            settled = _next_note(receiver, lambda f: "READY" in f)
            last = re.search(r"generation (\d+) active", settled["STATUS"])
            assert last is not None
            manager.wait_line(rf"generation {last.group(1)} ready after")
            started = [line for line in manager.lines if "started as pid" in line]
    assert 2 <= len(started) <= 3, started  # generation 1, then one or two for the storm
    assert int(last.group(1)) == len(started)


def test_a_generation_that_never_gets_ready_is_killed_at_the_ready_timeout(
    tmp_path: Path,
) -> None:
    command = tmp_path / "command.json"
    options = ("--ready", "notify", "--ready-timeout", "3")
    with running(tmp_path, write_command(command, DEMO), *options) as manager:
        write_command(command, app("never_ready.py"))
        answer = manager.call("reload")
        manager.wait_line(r"generation 2 .* killed by signal 9 \(SIGKILL\)")
        status = manager.status()
    assert not answer["ok"]
    assert "generation 2 was not ready within 3 s; killed" in answer["error"]
    assert [(g["generation"], g["state"]) for g in status["generations"]] == [(1, "active")]


def test_past_the_drain_deadline_the_generation_that_ignores_term_is_killed(
    tmp_path: Path,
) -> None:
    with running(tmp_path, app("ignore_term.py"), "--drain-timeout", "0.3") as manager:
        old = manager.status()["generations"][0]["pid"]
        assert manager.call("reload")["ok"]
        manager.wait_line(r"generation 1 killed \(SIGKILL to group \d+\): still running 0.3 s")
        manager.wait_line(rf"generation 1 \(pid {old}\) killed by signal 9")
        assert not alive(old)


def test_a_grandchild_left_in_the_group_is_killed_at_the_deadline_and_reaped(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "worker.pid"
    with running(
        tmp_path, app("grandchild.py", str(pid_file)), "--drain-timeout", "0.5"
    ) as manager:
        worker = int(pid_file.read_text())
        assert manager.call("reload")["ok"]
        manager.wait_line(r"generation 1 \(pid \d+\) exited on SIGTERM after its drain, leaving")
        assert alive(worker)  # draining: the deadline is not there yet
        manager.wait_line(r"generation 1 killed \(SIGKILL to group")
        manager.wait_line(rf"reaped orphan pid {worker}: killed by signal 9")
        assert wait_exit(worker)
        assert [g["generation"] for g in manager.status()["generations"]] == [2]


def test_orphans_are_reaped_as_a_subreaper(tmp_path: Path) -> None:
    with running(tmp_path, app("orphan.py")) as manager:
        orphan = manager.wait_line(r"^\[gen 1 pid \d+\] orphan pid (\d+)").group(1)
        manager.wait_line(rf"reaped orphan pid {orphan}: exited with code 7")
        assert not os.path.exists(f"/proc/{orphan}")


def test_sigterm_drains_and_exits_0_and_a_second_term_hurries(tmp_path: Path) -> None:
    with running(tmp_path, app("ignore_term.py"), "--drain-timeout", "60") as manager:
        pid = manager.status()["generations"][0]["pid"]
        manager.signal(signal.SIGTERM)
        manager.wait_line(r"generation 1 draining")
        assert alive(pid)
        manager.signal(signal.SIGTERM)
        manager.wait_line(r"stop hurried by SIGTERM")
        assert manager.wait() == 0
    assert not alive(pid)


def test_sigint_stops_the_manager_gracefully(tmp_path: Path) -> None:
    with running(tmp_path, DEMO) as manager:
        manager.signal(signal.SIGINT)
        assert manager.wait() == 0
    assert any(
        "generation 1 (pid" in line and "exited with code 0" in line for line in manager.lines
    )


def ready_via(how: str, generation: int = 1) -> str:
    return rf"generation {generation} ready after \d+ ms \({how}\)"


def test_systemd_notify_from_a_shell_child_makes_it_ready(tmp_path: Path) -> None:
    command = ["sh", "-c", "systemd-notify --ready --status=up; exec sleep 1000"]
    with running(tmp_path, command, "--ready", "notify", ready_line=ready_via("notify")) as manager:
        assert manager.status()["generations"][0]["status"] == "up"


def test_accept_readiness_for_a_server_without_notify(tmp_path: Path) -> None:
    command = app("accept_only.py")
    with running(tmp_path, command, "--ready", "accept", ready_line=ready_via("accept")) as manager:
        assert manager.call("reload")["ok"]
        manager.wait_line(ready_via("accept", 2))


def test_auto_readiness_is_an_accept_with_or_without_ready(tmp_path: Path) -> None:
    with running(tmp_path, app("accept_only.py"), ready_line=ready_via("accept")):
        pass
    (tmp_path / "second").mkdir()
    # READY=1 alone is not enough (tests/run/test_traps.py): it accepts as well.
    ready = ready_via(r"(notify\+)?accept")
    with running(tmp_path / "second", app("ignore_term.py"), ready_line=ready):
        pass


def test_delay_readiness_is_a_timer_on_request(tmp_path: Path) -> None:
    with running(tmp_path, app("never_ready.py"), "--ready", "delay:0.2", ready_line=None) as m:
        latency = m.wait_line(r"generation 1 ready after (\d+) ms \(delay\)").group(1)
    assert int(latency) >= 200


def test_the_first_generation_failing_ends_the_manager_with_exit_1(tmp_path: Path) -> None:
    with running(tmp_path, app("exit3.py"), ready_line=None) as manager:
        assert manager.wait() == 1
    log = "\n".join(manager.lines)
    assert "generation 1 exited with code 3 before it was ready" in log
    assert "ImportError" in log


def test_an_active_generation_that_dies_is_replaced(tmp_path: Path) -> None:
    with running(tmp_path, DEMO) as manager:
        pid = manager.status()["generations"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        manager.wait_line(r"generation 2 ready after")
        assert [g["state"] for g in manager.status()["generations"]] == ["active"]


def test_upstream_systemd_gets_ready_reloading_and_stopping(tmp_path: Path) -> None:
    with NotifyReceiver() as receiver:
        env = {**os.environ, "NOTIFY_SOCKET": receiver.address}
        with running(tmp_path, DEMO, env=env) as manager:
            first = _next_note(receiver, lambda f: "READY" in f)
            assert first["READY"] == "1" and "generation 1 active" in first["STATUS"]
            manager.signal(signal.SIGHUP)
            reloading = _next_note(receiver, lambda f: "RELOADING" in f)
            assert int(reloading["MONOTONIC_USEC"]) > 0
            again = _next_note(receiver, lambda f: "READY" in f)
            assert "generation 2 active" in again["STATUS"]
            manager.signal(signal.SIGTERM)
            assert _next_note(receiver, lambda f: "STOPPING" in f)["STOPPING"] == "1"
            assert manager.wait() == 0


def _next_note(receiver: NotifyReceiver, wanted: object) -> dict[str, str]:
    import select

    assert callable(wanted)
    while select.select([receiver], [], [], TIMEOUT)[0]:
        note = receiver.receive()
        if note is not None and wanted(note.fields):
            return dict(note.fields)
    raise AssertionError(f"no such notification in {TIMEOUT} s")


def test_pid_file_names_the_manager_and_is_removed_at_stop(tmp_path: Path) -> None:
    pid_file = tmp_path / "gapless.pid"
    with running(tmp_path, DEMO, "--pid-file", str(pid_file)) as manager:
        assert int(pid_file.read_text()) == manager.process.pid
        assert manager.call("reload")["ok"]
        assert int(pid_file.read_text()) == manager.process.pid  # stable across reloads
        assert manager.call("stop")["ok"]
        assert manager.wait() == 0
    assert not pid_file.exists()


def test_json_log_format_has_one_object_per_event(tmp_path: Path) -> None:
    with running(tmp_path, DEMO, "--log-format", "json", ready_line='"event": "ready"') as manager:
        assert manager.call("stop")["ok"]
        manager.wait()
    records = [json.loads(line) for line in manager.lines]
    started = next(r for r in records if r["event"] == "started")
    assert started["generation"] == 1 and isinstance(started["pid"], int)
    assert started["message"] == f"generation 1 started as pid {started['pid']}"
    assert any(r["event"] == "output" and r["generation"] == 1 for r in records)
    assert records[-1]["event"] == "stopped"


def test_unix_socket_path_is_unlinked_only_at_the_final_stop(tmp_path: Path) -> None:
    path = tmp_path / "web.sock"
    options = ("--drain-timeout", "0.2")
    with running(tmp_path, app("ignore_term.py"), *options, binds=(f"unix:{path}",)) as manager:
        assert path.exists()
        assert manager.call("reload")["ok"]
        manager.wait_line(r"generation 1 \(pid \d+\) killed by signal 9")
        assert path.exists()
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(path))
        probe.close()
        manager.signal(signal.SIGTERM)
        assert manager.wait() == 0
    assert not path.exists()


def test_an_idle_manager_never_wakes_up(tmp_path: Path) -> None:
    with running(tmp_path, DEMO) as manager:
        manager.status()  # the last event, but for the EOF of this client
        wait_exit(manager.process.pid, 0.2)
        before = _switches(manager.process.pid)
        assert not wait_exit(manager.process.pid, 0.5)  # half a second of nothing
        assert _switches(manager.process.pid) == before


def _switches(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def test_usr1_and_usr2_are_forwarded_to_the_active_generation(tmp_path: Path) -> None:
    with running(tmp_path, app("echo_signals.py")) as manager:
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            manager.signal(sig)
            manager.wait_line(rf"forwarded {sig.name} to generation 1")
            manager.wait_line(rf"^\[gen 1 pid \d+\] got {sig.name}$")


def test_upgrade_in_place_keeps_the_pid_the_sockets_and_the_children(tmp_path: Path) -> None:
    with running(tmp_path, DEMO) as manager, Prober(manager.port) as prober:
        before = manager.status()
        answer = manager.call("upgrade")
        assert answer["ok"], answer
        manager.wait_line(rf"resumed in place as pid {manager.process.pid}")
        after = manager.status()
        assert after["manager"]["upgrades"] == 1
        assert after["generations"] == [
            {**before["generations"][0], "age": after["generations"][0]["age"]}
        ]
        assert after["listeners"] == before["listeners"]
        prober.wait_answers(prober.answered + 3)
        assert manager.call("reload")["ok"]  # the adopted generation drains as usual
        manager.wait_line(r"generation 1 \(pid \d+\) exited with code 0")
        prober.finish()
        assert manager.call("stop")["ok"]
        assert manager.wait() == 0
    assert prober.failures == []
    assert not (tmp_path / "control.sock").exists()


def test_upgrade_carries_a_draining_generation_and_its_deadline(tmp_path: Path) -> None:
    # The drain deadline must outlast the re-exec even on a loaded machine.
    with running(tmp_path, app("ignore_term.py"), "--drain-timeout", "4") as manager:
        assert manager.call("reload")["ok"]
        manager.wait_line(r"generation 1 draining")
        assert manager.call("upgrade")["ok"]
        manager.wait_line(r"resumed in place")
        assert [g["state"] for g in manager.status()["generations"]] == ["draining", "active"]
        manager.wait_line(r"generation 1 killed \(SIGKILL to group \d+\): still running 4 s")
        manager.wait_line(r"generation 1 \(pid \d+\) killed by signal 9")


def test_upgrade_is_refused_while_a_generation_starts(tmp_path: Path) -> None:
    command = tmp_path / "command.json"
    with running(tmp_path, write_command(command, DEMO), "--ready", "notify") as manager:
        write_command(command, app("never_ready.py"))
        manager.signal(signal.SIGHUP)
        manager.wait_line(r"generation 2 started")
        answer = manager.call("upgrade")
        assert answer == {
            "v": 1,
            "ok": False,
            "error": "cannot upgrade now: a reload is under way; retry in a moment",
        }


def test_upgrade_to_a_missing_interpreter_is_refused_and_nothing_changes(
    tmp_path: Path,
) -> None:
    with running(tmp_path, DEMO) as manager:
        answer = manager.call("upgrade", python="/nonexistent/python")
        assert not answer["ok"]
        assert answer["error"].startswith("cannot upgrade with '/nonexistent/python'")
        assert manager.status()["manager"]["upgrades"] == 0
