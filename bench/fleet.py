#!/usr/bin/env python3
"""A rolling deploy across a fleet of three gapless hosts behind HAProxy, under load.

Each host is its own ``gapless serve`` (or, with ``--server gunicorn``, ``gapless run
-- gunicorn``) on 127.0.0.2, .3 and .4, with ``--health-bind`` on the same address;
HAProxy (Debian's, run in the foreground as our child) listens on 127.0.0.1 and
health-checks each host's endpoint. The open-loop prober and wrk load HAProxy with
keep-alive while every host is deployed in turn, ``--deploys`` times; see
fleet_deploy.py for the modes. Everything runs in a temporary directory and is
stopped on any exit. docs/fleet.md has the recipe and the figures.

    .venv/bin/python bench/fleet.py --deploy reload,replace,replace-no-delay --json fleet.json
    .venv/bin/python bench/fleet.py --deploy replace --drain-mode runtime-api --deploys 3
    .venv/bin/python bench/fleet.py --deploy replace --server gunicorn
    .venv/bin/python bench/fleet.py --from-json fleet.json    # the table in docs/fleet.md

Exit status: 0 if every run completed (failed requests are figures, not errors),
1 if a run could not be completed, 2 on a bad option.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_deploy import DEPLOYS, DRAIN_MODES, FleetConfig, run_fleet
from fleet_haproxy import haproxy_path
from fleet_hosts import SERVERS
from fleet_report import (
    failure_lines,
    format_markdown,
    format_table,
    summarize,
    write_json,
)

from gapless.errors import GaplessError


def _deploys(value: str) -> list[str]:
    modes = [mode.strip() for mode in value.split(",") if mode.strip()]
    for mode in modes:
        if mode not in DEPLOYS:
            raise argparse.ArgumentTypeError(
                f"unknown deploy mode {mode!r}: give {', '.join(DEPLOYS)}"
            )
    return modes


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


#: Every option but --deploy: its flags and argparse keywords.
OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--deploys", dict(type=int, default=10, metavar="N", help="deploys per run (default 10)")),
    ("--hosts", dict(type=int, choices=(2, 3), default=3, help="hosts in the fleet (default 3)")),
    ("--server", dict(choices=SERVERS, default="serve",
        help="each host: gapless serve (ASGI) or gapless run -- gunicorn (WSGI)")),
    ("--drain-mode", dict(choices=DRAIN_MODES, default="health",
        help="replace: by the health endpoint and --shutdown-delay, or by HAProxy's runtime API")),
    ("--shutdown-delay", dict(type=_positive, default=1.0, metavar="S",
        help="replace's --shutdown-delay (default 1.0; HAProxy sees 503 within ~0.2 s)")),
    ("--drain-timeout", dict(type=_positive, default=10.0, metavar="S", help="hosts' (10)")),
    ("--rate", dict(type=_positive, default=200.0, metavar="R", help="prober requests/s (200)")),
    ("--connections", dict(type=int, default=16, metavar="C", help="prober's pool (default 16)")),
    ("--wrk-connections", dict(type=int, default=4, metavar="C",
        help="wrk's connections, one thread (default 4; 0: no wrk)")),
    ("--gap", dict(type=_positive, default=1.0, metavar="S", help="steady seconds around deploys")),
    ("--redispatch", dict(action="store_true",
        help="HAProxy retries elsewhere: option redispatch, retry-on conn-failure empty-response")),
    ("--timeout", dict(type=_positive, default=30.0, metavar="S", help="any one wait (30)")),
    ("--json", dict(metavar="PATH", help="write every figure (and the HAProxy config) here")),
    ("--from-json", dict(nargs="+", metavar="PATH",
        help="run nothing: print docs/fleet.md's table from these --json files")),
)  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Rolling deploys across three gapless hosts behind HAProxy, under load.",
        epilog="Example: bench/fleet.py --deploy reload,replace,replace-no-delay --json fleet.json",
    )
    parser.add_argument(
        "--deploy",
        type=_deploys,
        default=["replace"],
        metavar="MODE[,MODE]",
        help=f"one run per mode, in order: {', '.join(DEPLOYS)} (default replace)",
    )
    for flag, keywords in OPTIONS:
        parser.add_argument(flag, **keywords)
    args = parser.parse_args(argv)
    if args.deploys < 1 or args.connections < 1 or args.wrk_connections < 0:
        parser.error("--deploys and --connections take 1 or more, --wrk-connections 0 or more")
    if args.drain_mode == "runtime-api" and args.deploy == ["reload"]:
        parser.error("--drain-mode runtime-api drives a replacement: add --deploy replace")
    return args


def _config(args: argparse.Namespace, deploy: str) -> FleetConfig:
    return FleetConfig(
        deploy=deploy, deploys=args.deploys, hosts=args.hosts, server=args.server,
        drain_mode=args.drain_mode,
        shutdown_delay=args.shutdown_delay, drain_timeout=args.drain_timeout, rate=args.rate,
        connections=args.connections, wrk_connections=args.wrk_connections, gap=args.gap,
        redispatch=args.redispatch, timeout=args.timeout,
    )  # fmt: skip


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: the fleet is stopped


def _tabulate(paths: list[str]) -> int:
    try:
        rows = [row for path in paths for row in json.loads(Path(path).read_text())["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"fleet: cannot read the runs in {' '.join(paths)}: {exc}", file=sys.stderr)
        return 1
    print(format_markdown(rows) + "\n\n" + failure_lines(rows))
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.from_json:
        return _tabulate(args.from_json)
    if haproxy_path() is None:
        print("fleet: haproxy is not installed: apt-get install haproxy", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGHUP, _stop_on_signal)
    rows = []
    try:
        for deploy in args.deploy:
            with tempfile.TemporaryDirectory(prefix="gapless-fleet-") as directory:
                rows.append(summarize(run_fleet(_config(args, deploy), directory)))
            if len(args.deploy) > 1:  # a run's figures as soon as it ends
                print(format_table(rows[-1:]) + "\n", flush=True)
    except GaplessError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 1
    finally:
        if rows:
            print(format_table(rows))
            if args.json:
                write_json(rows, args.json, [os.path.basename(sys.argv[0]), *argv])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
