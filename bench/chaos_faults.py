"""The process faults of bench/chaos.py: a generation killed, stopped, hanging or
crashing on start; reload storms; the manager stopped mid-reload or killed;
upgrades; fds and disk space running out.

Each fault takes the campaign's state (:class:`Chaos`) and its
:class:`~chaos_target.FaultRecord`, waits only on events (an answer, a log line,
a pidfd) with a timeout, and raises FaultProblem when an outcome breaks a goal.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from chaos_basics import (
    TIMEOUT,
    FaultProblem,
    FaultRecord,
    ManagerGone,
    connect_unix,
    final_answers,
    kill_groups,
)
from chaos_campaign import Chaos
from chaos_log import ManagerLog
from chaos_target import Target

from gapless.bench.processes import still_running
from gapless.run.generations import CRASH_LIMIT, CRASH_WINDOW

RELOAD = b'{"v": 1, "cmd": "reload"}\n'
_HOLD = threading.Event()  # never set: its wait() is a deliberate length of time


def log(target: Target) -> ManagerLog:
    assert target.log is not None
    return target.log


def kill_generation(chaos: Chaos, record: FaultRecord) -> None:
    target = chaos.target
    _pace_crashes(chaos, record)
    victim, ready = target.active_pid(), log(target).count("ready")
    record.inject_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    record.kills.append(record.inject_at)
    chaos.kills.append(record.inject_at)
    log(target).wait_count("ready", ready, target.config.ready_timeout + TIMEOUT)


def _pace_crashes(chaos: Chaos, record: FaultRecord) -> None:
    """Past CRASH_LIMIT replacements within CRASH_WINDOW s the manager gives up, as
    it should (a crash loop): keep the campaign's kills under that rate."""
    now = time.monotonic()
    while chaos.kills and now - chaos.kills[0] >= CRASH_WINDOW:
        chaos.kills.popleft()
    if len(chaos.kills) >= CRASH_LIMIT - 1:
        pause = CRASH_WINDOW - (now - chaos.kills[0]) + 0.1
        record.notes.append("paced for the crash limit")
        _HOLD.wait(pause)  # pacing, the one deliberate wait of this fault


def stop_generation(chaos: Chaos, record: FaultRecord) -> None:
    victim = chaos.target.active_pid()
    record.inject_at = time.monotonic()
    os.kill(victim, signal.SIGSTOP)
    try:
        _HOLD.wait(chaos.stop_for)  # how long it stays stopped: the fault itself
    finally:
        os.kill(victim, signal.SIGCONT)
    chaos.target.status()


def _bad_start(chaos: Chaos, record: FaultRecord, mode: str) -> None:
    target = chaos.target
    target.set_mode(mode)
    try:
        record.inject_at = time.monotonic()
        answer = target.call("reload", timeout=target.config.ready_timeout + TIMEOUT)
    finally:
        target.set_mode("serve")
    if answer.get("ok"):
        raise FaultProblem(f"a generation set to {mode} on start was reported ready: {answer}")


def hang_on_start(chaos: Chaos, record: FaultRecord) -> None:
    _bad_start(chaos, record, "hang")


def crash_on_start(chaos: Chaos, record: FaultRecord) -> None:
    _bad_start(chaos, record, "crash")


def reload(chaos: Chaos, record: FaultRecord) -> None:
    record.inject_at = time.monotonic()
    answer = chaos.target.call("reload", timeout=chaos.target.config.ready_timeout + TIMEOUT)
    if not answer.get("ok"):
        raise FaultProblem(f"a plain reload failed: {answer.get('error')}")


def reload_storm(chaos: Chaos, record: FaultRecord) -> None:
    target = chaos.target
    started = log(target).count("started")
    socks = [connect_unix(target.control, TIMEOUT) for _ in range(chaos.storm)]
    try:
        record.inject_at = time.monotonic()
        for sock in socks:
            sock.sendall(RELOAD)
        answers = final_answers(socks, 2 * target.config.ready_timeout + TIMEOUT)
    finally:
        for sock in socks:
            sock.close()
    if not all(answer and answer.get("ok") for answer in answers):
        bad = [a for a in answers if not (a and a.get("ok"))]
        raise FaultProblem(f"{len(bad)} of {chaos.storm} stormed reloads failed: {bad[0]}")
    started = log(target).count("started") - started
    if started > 2:
        raise FaultProblem(f"{chaos.storm} reloads at once started {started} generations, not <= 2")


def upgrade(chaos: Chaos, record: FaultRecord) -> None:
    target = chaos.target
    before = target.status()["manager"]
    record.inject_at = time.monotonic()
    answer = target.call("upgrade")
    if not answer.get("ok"):
        raise FaultProblem(f"gapless upgrade failed: {answer.get('error')}")
    expect_upgraded(target, before, record)


def expect_upgraded(target: Target, before: dict[str, Any], record: FaultRecord) -> None:
    """The manager answered an upgrade: its next answer comes from the new image."""
    record.image_changed = True
    after = target.status()["manager"]
    if after["pid"] != before["pid"] or after["upgrades"] != before["upgrades"] + 1:
        raise FaultProblem(f"after an upgrade: pid {after['pid']}, upgrades {after['upgrades']}")


# The manager stopped on purpose ---------------------------------------------------------------


def term_mid_reload(chaos: Chaos, record: FaultRecord) -> None:
    target = chaos.target
    started = log(target).count("started")
    with connect_unix(target.control, TIMEOUT) as client:
        client.sendall(RELOAD)
        log(target).wait_count("started", started)
        record.inject_at = time.monotonic()
        record.kills.append(record.inject_at)
        record.down_since = record.inject_at
        os.kill(target.pid, signal.SIGTERM)
        answer = final_answers([client], target.config.drain_timeout + TIMEOUT)[0]
    if answer is None:
        record.problems.append("the reload cut short by TERM got no answer")
    code = target.wait_exit(target.config.drain_timeout + TIMEOUT)
    if code is None:
        target.kill()
        raise FaultProblem("the manager did not stop on TERM; killed")
    if code != 0:
        record.problems.append(f"the manager exited with code {code} on TERM:\n{target.tail()}")
    restart(chaos, record, [])


def kill_manager(chaos: Chaos, record: FaultRecord) -> None:
    target = chaos.target
    pids = target.generation_pids()
    record.inject_at = time.monotonic()
    record.kills.append(record.inject_at)
    record.down_since = record.inject_at
    target.kill()
    # The watchdog: each generation's group gets its stop signal, drains and exits.
    still = still_running(pids, target.config.drain_timeout + TIMEOUT)
    restart(chaos, record, still)


def restart(chaos: Chaos, record: FaultRecord, survivors: list[int]) -> None:
    """Start the next manager once the last one ended (at ``record.down_since``)."""
    target = chaos.target
    left = target.left_behind()
    record.left_behind += [f"pid {pid}: {line}" for pid, line in left.items()]
    kill_groups([*survivors, *left])
    record.back_up(target.start())
    record.image_changed = True
    chaos.kills.clear()  # a new manager counts crashes anew


# Resources running out -------------------------------------------------------------------------


def fd_exhaustion(chaos: Chaos, record: FaultRecord) -> None:
    """RLIMIT_NOFILE lowered to what is open plus one: a reload (its client takes the
    last fd), idle control clients (the first keeps the last fd), a health probe
    (--health) left pending for --stop-for, a status; then the limit comes back and
    the probe must be answered."""
    target = chaos.target
    pid = target.pid
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    held: list[socket.socket] = []
    record.inject_at = time.monotonic()
    resource.prlimit(
        pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")) + 1, limits[1])
    )
    try:
        answer = target.call("reload", timeout=target.config.ready_timeout + TIMEOUT)
        record.notes.append("reload out of fds: " + ("ok" if answer.get("ok") else "refused"))
        held += [connect_unix(target.control, TIMEOUT) for _ in range(3)]
        answer = target.status()
        record.notes.append("status out of fds: " + ("ok" if answer.get("ok") else "refused"))
        if target.health_port is not None:
            probe = socket.create_connection(("127.0.0.1", target.health_port), TIMEOUT)
            held.insert(0, probe)
            _pending_probe(chaos, record, probe)
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        for sock in held[1:] if target.health_port is not None else held:
            sock.close()
    if target.health_port is not None:
        with held[0]:
            if not _recv_some(held[0]).startswith(b"HTTP/1.1 200"):
                raise FaultProblem("the health probe sent out of fds was not answered 200")


def _pending_probe(chaos: Chaos, record: FaultRecord, probe: socket.socket) -> None:
    """A health probe the manager has no fd to accept: it must wait, not spin."""
    pid = chaos.target.pid
    probe.sendall(b"GET / HTTP/1.1\r\nHost: chaos\r\n\r\n")
    cpu, began = _cpu_seconds(pid), time.monotonic()
    _HOLD.wait(chaos.stop_for)  # how long the probe waits out of fds: the fault
    spent, wall = _cpu_seconds(pid) - cpu, time.monotonic() - began
    if spent > 0.5 * wall:
        record.problems.append(f"the manager spun out of fds: {spent:.2f} s CPU in {wall:.2f} s")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _recv_some(sock: socket.socket) -> bytes:
    with contextlib.suppress(OSError):
        return sock.recv(4096)
    return b""


def pid_file_full(chaos: Chaos, record: FaultRecord) -> None:
    """The PID file's filesystem (a 64k tmpfs) full: a reload and an upgrade, then
    the PID file must still name the manager."""
    target = chaos.target
    assert target.pid_file is not None and target.config.pid_dir is not None
    filler = target.config.pid_dir / "filler"
    try:
        fill = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with contextlib.suppress(OSError):
            while os.write(fill, b"\0" * 4096):
                pass
        os.close(fill)
        record.inject_at = time.monotonic()
        reload(chaos, record)
        before = target.status()["manager"]
        answer = target.call("upgrade")
        if answer.get("ok"):
            expect_upgraded(target, before, record)
        else:
            record.notes.append("upgrade on a full disk refused")
    finally:
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()
    try:
        named = Path(target.pid_file).read_text().strip()
    except OSError as exc:
        named = f"unreadable ({errno.errorcode.get(exc.errno or 0, exc)})"
    if target.alive() and named != str(target.pid):
        raise FaultProblem(f"the PID file says {named!r}, the manager is {target.pid}")
    if not target.alive():
        raise ManagerGone("the manager exited after a reload and upgrade on a full disk")
