"""The supervised fault of bench/chaos.py: ``gapless run --handoff`` under runit's
runsv, its supervised process (the front) killed with SIGKILL, then its manager.

For this fault the campaign's own manager stops (an intended stop) and a runit
service serves the same address instead:

1. SIGKILL to the front, the process runsv watches. The manager it forked serves
   on, detached; runsv runs ./run again and the new instance takes the sockets
   over the handoff socket. Nothing may fail: this is no outage.
2. SIGKILL to the new instance's manager. Its generation gets its stop signal
   (PR_SET_PDEATHSIG), drains and exits; runsv starts an instance that binds
   afresh. From the kill until that one is ready nothing is meant to serve, and
   nothing of the killed manager may be left.
3. The service stops (``sv once``, ``gapless stop``, ``sv exit``) and the
   campaign's manager starts again.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from typing import Any

from chaos_basics import PYTHON, TIMEOUT, FaultProblem, FaultRecord, ask, kill_groups
from chaos_campaign import Chaos
from chaos_log import ManagerLog
from chaos_target import Target

from gapless.bench.processes import still_running


def available() -> bool:
    return all(shutil.which(tool) for tool in ("runsv", "sv"))


class Service:
    """A runit service directory whose ./run execs ``gapless run --handoff``; every
    instance writes its log to one FIFO, read here for good."""

    def __init__(self, target: Target) -> None:
        work = target.config.workdir / "runit"
        self.dir = work / "app"
        self.dir.mkdir(parents=True)
        self.control = str(work / "control.sock")
        self.timeout = target.config.drain_timeout + TIMEOUT
        fifo = work / "log"
        os.mkfifo(fifo)
        # Held open for writing here too: no EOF between two instances.
        stream = os.fdopen(os.open(fifo, os.O_RDWR), "r", errors="replace")
        self.log = ManagerLog(stream, None, target.leaders)
        self.log.start()
        server, options = target.server_argv()
        argv = [PYTHON, "-m", "gapless.cli", "run", "--handoff", "--control", self.control]
        argv += ["--log-format", "json", *options, "--bind", f"web=127.0.0.1:{target.port}"]
        argv += ["--drain-timeout", f"{target.config.drain_timeout:g}", "--", *server]
        run = self.dir / "run"
        run.write_text(f"#!/bin/sh\nexec 2>{shlex.quote(str(fifo))}\nexec {shlex.join(argv)}\n")
        run.chmod(0o755)

    def sv(self, command: str) -> None:
        done = subprocess.run(["sv", command, str(self.dir)], capture_output=True, timeout=TIMEOUT)
        if done.returncode != 0:
            raise FaultProblem(f"sv {command}: {done.stdout!r} {done.stderr!r}")

    def status(self) -> dict[str, Any]:
        return ask(self.control, "status", TIMEOUT)


def supervised_kill(chaos: Chaos, record: FaultRecord) -> None:
    target = chaos.target
    if chaos.service is None:
        chaos.service = Service(target)
    service: Service = chaos.service
    stopped_at = time.monotonic()
    record.kills.append(stopped_at)
    target.stop()
    ready = service.log.count("ready")
    runsv = subprocess.Popen(
        ["runsv", str(service.dir)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        service.log.wait_count("ready", ready, service.timeout)
        record.outages.append((stopped_at, time.monotonic()))
        _kill_front(service, record)
        stopped_at = _kill_manager(service, record)
        service.sv("once")  # runsv must not start it again once it stops
        stopped_at = time.monotonic()
        record.kills.append(stopped_at)
        ask(service.control, "stop", service.timeout)
        service.sv("exit")
        runsv.wait(TIMEOUT)
    finally:
        if runsv.poll() is None:
            kill_groups([runsv.pid])
            runsv.wait(TIMEOUT)
        left = target.left_behind()
        record.left_behind += [f"pid {pid}: {line}" for pid, line in left.items()]
        kill_groups(list(left))
        record.outages.append((stopped_at, target.start()))
        record.image_changed = True
        chaos.kills.clear()


def _kill_front(service: Service, record: FaultRecord) -> None:
    """Step 1: the next instance takes over, the old manager retires; no outage."""
    front, manager = service.log.fronts[-1]
    ready = service.log.count("ready")
    record.inject_at = time.monotonic()
    os.kill(front, signal.SIGKILL)
    service.log.wait_count("ready", ready, service.timeout)
    if still_running([manager], service.timeout):
        raise FaultProblem(f"the manager detached from a killed front (pid {manager}) stays")


def _kill_manager(service: Service, record: FaultRecord) -> float:
    """Step 2: the killed manager's generations drain; runsv starts one anew."""
    status = service.status()
    pids = [pid for g in status["generations"] for pid in g.get("pids") or [g["pid"]]]
    manager = int(status["manager"]["pid"])
    ready = service.log.count("ready")
    killed_at = time.monotonic()
    record.kills.append(killed_at)
    os.kill(manager, signal.SIGKILL)
    still = still_running(pids, service.timeout)
    if still:
        record.left_behind += [f"pid {pid}: outlived its SIGKILLed manager" for pid in still]
        kill_groups(still)
    service.log.wait_count("ready", ready, service.timeout)
    record.outages.append((killed_at, time.monotonic()))
    return killed_at
