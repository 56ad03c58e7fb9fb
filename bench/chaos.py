"""A fault campaign against ``gapless run``: faults drawn at random under load.

    .venv/bin/python bench/chaos.py --faults 1000 --seed 1 --json chaos.json

Starts ``gapless run`` with the demo server (``--server gunicorn``: gunicorn, 2
sync workers), sends it requests at a fixed rate with the open-loop prober
(gapless.bench.prober, a new connection each) and, per fault window, with wrk
(keep-alive, paced by a Lua ``delay``), and injects faults one after the other,
each kind drawn from a shuffled deck (so every kind comes as often), until
``--faults`` or ``--duration``. After each fault it waits until the manager has
settled (one generation, active), then samples its fds, RSS and zombies.

Prints one table (docs/reliability.md, "Fault campaign"), per fault kind:
injected, requests that failed while a generation served, the manager alive
after it, fds and RSS before/after; and the processes left behind at the end.
Exit status 0 when every goal holds: no failed request where a generation
served, the manager alive after every fault, fds flat, nothing left behind.
Needs root for the notify flood from uid 65534 and the tmpfs of the PID file;
without it those kinds are left out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chaos_basics import FaultRecord, kill_groups
from chaos_campaign import Campaign, Chaos, Kind, WrkWindow
from chaos_faults import (
    crash_on_start,
    fd_exhaustion,
    hang_on_start,
    kill_generation,
    kill_manager,
    pid_file_full,
    reload,
    reload_storm,
    stop_generation,
    term_mid_reload,
    upgrade,
)
from chaos_hostile import (
    garbage,
    hypothesis_json,
    idle_connections,
    never_reading,
    notify_flood,
    oversized_line,
    wrong_types,
)
from chaos_report import table, tally, to_json
from chaos_supervised import available as runit_available
from chaos_supervised import supervised_kill
from chaos_target import Target, TargetConfig

from gapless.bench.prober import Prober, ProberConfig
from gapless.proc.subreaper import set_child_subreaper
from gapless.sockets.addresses import TcpAddress

KINDS = (
    Kind("kill-generation", kill_generation, "SIGKILL to the active generation"),
    Kind(
        "stop-generation", stop_generation, "SIGSTOP, SIGCONT --stop-for later, to the active one"
    ),
    Kind("hang-on-start", hang_on_start, "a reload whose generation never gets ready"),
    Kind("crash-on-start", crash_on_start, "a reload whose generation exits 3 at once"),
    Kind("reload", reload, "a plain reload, for comparison"),
    Kind("reload-storm", reload_storm, "20 reloads at once on 20 connections"),
    Kind("upgrade", upgrade, "gapless upgrade: the manager execs itself in place"),
    Kind(
        "term-mid-reload",
        term_mid_reload,
        "TERM to the manager while a generation starts; restarted",
        stops_manager=True,
    ),
    Kind(
        "kill-manager",
        kill_manager,
        "SIGKILL to the manager; restarted",
        stops_manager=True,
    ),
    Kind("garbage", garbage, "random bytes on the control socket"),
    Kind("never-reading", never_reading, "a control client that sends and never reads"),
    Kind("idle-1000", idle_connections, "1,000 control connections that send nothing"),
    Kind("oversized-line", oversized_line, "a control line of 64 KiB to 2 MiB"),
    Kind("wrong-types", wrong_types, "every command with every wrong type in each field"),
    Kind("hypothesis-json", hypothesis_json, "25 JSON objects drawn by hypothesis"),
    Kind("notify-flood", notify_flood, "3,000 datagrams from uid 65534 to NOTIFY_SOCKET"),
    Kind("fd-exhaustion", fd_exhaustion, "RLIMIT_NOFILE at open fds + 1: reload, health, clients"),
    Kind("pid-file-full", pid_file_full, "the PID file's 64k tmpfs full: reload, upgrade"),
    Kind(
        "supervised-kill",
        supervised_kill,
        "under runsv with --handoff: SIGKILL to the front, then to the manager",
        stops_manager=True,
    ),
)
# The kinds that keep the manager's process image (no upgrade, stop or crash on
# today's main): a soak of them shows whether fds or RSS grow fault after fault.
SAME_MANAGER = (
    "kill-generation", "stop-generation", "hang-on-start", "crash-on-start", "reload",
    "reload-storm", "garbage", "idle-1000", "oversized-line", "hypothesis-json", "fd-exhaustion",
)  # fmt: skip
ROOT_ONLY = {"notify-flood", "pid-file-full"}


@contextlib.contextmanager
def small_tmpfs(directory: Path) -> Iterator[Path | None]:
    """A 64k tmpfs for the PID file (root only); None where it cannot be mounted."""
    directory.mkdir()
    mounted = (
        os.getuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(directory)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield directory if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], check=False)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=None, help="how many (default 1000)")
    parser.add_argument(
        "--duration", type=float, default=math.inf, help="seconds of faults at most"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.0, help="pause between faults, s")
    parser.add_argument(
        "--kinds", help="comma-separated kinds (default: all); same-manager: those that keep it"
    )
    parser.add_argument("--server", choices=("demo", "gunicorn"), default="demo")
    parser.add_argument("--rate", type=float, default=200.0, help="prober requests per second")
    parser.add_argument("--wrk-connections", type=int, default=4)
    parser.add_argument("--wrk-delay-ms", type=float, default=5.0, help="wrk's pause per request")
    parser.add_argument("--no-wrk", action="store_true")
    parser.add_argument("--ready-timeout", type=float, default=2.0)
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    parser.add_argument(
        "--health", action="store_true", help="--health-bind too (gapless upgrade is refused)"
    )
    parser.add_argument("--stop-for", type=float, default=0.3, help="SIGSTOP length, s")
    parser.add_argument(
        "--rss-slack-kb", type=int, default=1024, help="RSS growth still counted as flat"
    )
    parser.add_argument("--json", type=Path, help="write the figures and every fault here")
    parser.add_argument("--log", type=Path, help="write the managers' whole log here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args()
    if args.faults is None:
        args.faults = 1000 if args.duration == math.inf else sys.maxsize
    return args


def choose_kinds(names: str | None, pid_dir: Path | None, health: bool) -> list[Kind]:
    known = {kind.name: kind for kind in KINDS}
    wanted = (names or ",".join(known)).replace("same-manager", ",".join(SAME_MANAGER)).split(",")
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise SystemExit(f"unknown fault kinds {unknown}; known: {', '.join(known)}")
    skipped = {name for name in ROOT_ONLY if os.getuid() != 0}
    skipped |= {"pid-file-full"} if pid_dir is None else set()
    skipped |= {"upgrade", "pid-file-full"} if health else set()
    skipped |= set() if runit_available() else {"supervised-kill"}
    for name in sorted(skipped & set(wanted)):
        why = "--health refuses upgrades" if health else "it needs root (and a tmpfs)"
        print(f"chaos: {name} left out: {why}", file=sys.stderr)
    return [known[name] for name in wanted if name not in skipped]


def main() -> int:
    args = parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    set_child_subreaper()  # the generations a killed manager leaves come to us
    workdir = Path(tempfile.mkdtemp(prefix="gapless-chaos-"))
    try:
        with small_tmpfs(workdir / "pidfs") as pid_dir:
            return campaign(args, workdir, pid_dir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def campaign(args: argparse.Namespace, workdir: Path, pid_dir: Path | None) -> int:
    kinds = choose_kinds(args.kinds, pid_dir, args.health)
    config = TargetConfig(
        workdir, args.server, args.ready_timeout, args.drain_timeout, pid_dir, args.log, args.health
    )
    target = Target(config)
    chaos = Chaos(target, random.Random(args.seed), stop_for=args.stop_for)
    wrk = (
        None
        if args.no_wrk
        else WrkWindow(target.port, args.wrk_connections, args.wrk_delay_ms, workdir)
    )
    prober = Prober(
        ProberConfig(TcpAddress("127.0.0.1", target.port), rate=args.rate, keep_alive=False)
    )
    began = t0 = time.monotonic()
    records: list[FaultRecord] = []
    try:
        target.start()
        prober.start(t0 := time.monotonic())
        records = Campaign(chaos, kinds, wrk, args.interval).run(
            args.faults, args.duration, not args.quiet
        )
    finally:
        prober.finish_at(time.monotonic())
        samples = prober.join()
        if target.alive():
            target.stop()
        left = [f"pid {pid}: {line}" for pid, line in target.left_behind().items()]
        kill_groups(list(target.left_behind()))
        target.close()
    tallies = tally(records, samples, t0, args.wrk_connections)
    config = _config(args, kinds, time.monotonic() - began)
    config["t0_wall"] = round(time.time() - (time.monotonic() - t0), 3)  # to read the log by
    report = to_json(tallies, records, t0, left, config)
    print(table(tallies, [kind.name for kind in kinds]))
    print(_summary(report, len(records)))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0 if all(report["goals"].values()) else 1


def _config(args: argparse.Namespace, kinds: list[Kind], seconds: float) -> dict[str, Any]:
    options = {key: value for key, value in vars(args).items() if key not in ("json", "log")}
    return {**options, "kinds": [kind.name for kind in kinds], "seconds": round(seconds, 1)}


def _summary(report: dict[str, Any], faults: int) -> str:
    lines = [f"\n{faults} faults in {report['config']['seconds']} s"]
    lines += [f"  {'yes' if ok else 'NO '}  {goal}" for goal, ok in report["goals"].items()]
    if image := report["longest_image"]:
        lines.append(
            f"  the longest-lived manager went through {image['faults']} faults (from fault "
            f"{image['first_fault']}): fds {' -> '.join(map(str, image['fds']))}, RSS "
            f"{' -> '.join(f'{kb:,}' for kb in image['rss_kb'])} kB (first, a tenth in, last)"
        )
    lines += [f"  left behind at the end: {item}" for item in report["left_at_end"]]
    return "\n".join(lines)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
