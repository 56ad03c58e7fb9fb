"""``gapless bench``: reload a server under load and count every request it lost.

::

    gapless bench [--bind ADDRESS] [--reloads N] [--duration S] [--rate R]
                  [--connections C] [--keep-alive | --close] [--strategy NAME]
                  [--no-wrk] [--no-pin] [--output DIR] [-- COMMAND...]
    gapless bench --speed [--seconds S] [--reload-every S] [--rounds R]
                  [--servers uvicorn,granian] [--rate R] [--connections C] [--json FILE]

Exit codes: 0 nothing failed; 1 some request failed, or the bench could not run;
2 misuse of the command line.

Example::

    gapless bench --strategy naive --reloads 3 --duration 5
    gapless bench --strategy run -- uvicorn --fd 3 myapp:app
    gapless bench --speed --seconds 60      # issue 12's table: plain server vs gapless serve
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from ..cli_args import Parser, positive_seconds, whole_number
from ..errors import BenchError, GaplessError
from ..sockets.addresses import TcpAddress, parse_bind
from .strategies import STRATEGIES

__all__ = ["build_parser", "main"]

_EPILOG = (
    "strategies:\n"
    + "\n".join(f"  {name:<19} {kind.summary}" for name, kind in STRATEGIES.items())
    + """

COMMAND defaults to each strategy's own (the demo server, or the peer server with
gapless.bench.apps). run, library, serve and reuseport hand COMMAND its socket as
LISTEN_FDS (fd 3, named web), e.g. -- uvicorn --fd 3 app:app; the others bind by
themselves and need {address}, or {host} and {port}, in COMMAND.

--speed: plain uvicorn (and granian) beside gapless serve, steady and reloaded
every --reload-every seconds, each row --seconds long (default 20) under wrk -t1,
rows taking turns over --rounds rounds; prints medians, ratios to the plain
server, failures, reload -> ready and the load average."""
)

#: Options of the reload bench that --speed would ignore, with their defaults.
_NOT_SPEED = {"strategy": "run", "reloads": 5, "keep_alive": True, "wrk": None, "argv": []}
#: Options of --speed only; None when not given.
_SPEED_ONLY = ("reload_every", "rounds", "servers", "json")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="gapless bench",
        description="Reload a server again and again under load; count every failed request.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--bind", default="127.0.0.1:0", metavar="ADDRESS", help="HOST:PORT; default a free port")
    add("--reloads", type=_count, default=5, metavar="N", help="default 5")
    add(
        "--duration", "--seconds", type=positive_seconds, metavar="S",
        help="seconds of load, default 10 (--speed: per row, default 20)",
    )  # fmt: skip
    add("--rate", type=_positive, default=200.0, metavar="R", help="prober requests/s, default 200")
    add("--connections", type=_at_least_one, default=32, metavar="C", help="wrk's and the prober's")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--keep-alive", dest="keep_alive", action="store_true", default=True, help="the default"
    )
    mode.add_argument(
        "--close", dest="keep_alive", action="store_false", help="one request per connection"
    )
    add("--strategy", default="run", choices=list(STRATEGIES), metavar="NAME", help="default run")
    add("--no-wrk", dest="wrk", action="store_const", const=False, default=None, help="prober only")
    add(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not split CPUs between server and load",
    )
    add("--output", default="gapless-bench", metavar="DIR", help="for the JSON and PNG files")
    add(
        "--timeout",
        type=positive_seconds,
        default=60.0,
        metavar="S",
        help="for any one wait, default 60",
    )
    speed = parser.add_argument_group("speed mode")
    speed.add_argument("--speed", action="store_true", help="the throughput table (issue 12)")
    speed.add_argument("--reload-every", type=positive_seconds, metavar="S", help="default 2")
    speed.add_argument("--rounds", type=_at_least_one, metavar="R", help="default 3")
    speed.add_argument("--servers", type=_servers, metavar="LIST", help="default uvicorn,granian")
    speed.add_argument("--json", metavar="FILE", help="write every run and row here")
    add("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gapless bench``; print the report; return the exit code."""
    from .plot import write_png
    from .report import format_summary, summarize, write_json
    from .runner import BenchConfig, run_bench

    parser = build_parser()
    args = parser.parse_args(argv)
    misuse = _misuse(args)
    if misuse is not None:
        parser.error(misuse)
    if args.speed:
        return _speed(args)
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    try:
        config = BenchConfig(
            strategy=args.strategy,
            command=tuple(command),
            address=_address(args.bind),
            reloads=args.reloads,
            duration=args.duration or 10.0,
            rate=args.rate,
            connections=args.connections,
            keep_alive=args.keep_alive,
            wrk=args.wrk,
            pin=args.pin,
            timeout=args.timeout,
        )
        result = run_bench(config)
        summary = summarize(result)
        os.makedirs(args.output, exist_ok=True)
        stem = os.path.join(args.output, f"{args.strategy}-{time.strftime('%Y%m%d-%H%M%S')}")
        write_json(result, summary, stem + ".json")
        note = write_png(result, summary, stem + ".png")
        result.notes.append(
            f"result {stem}.json" + (f"; {note}" if note else f", timeline {stem}.png")
        )
        print(format_summary(result, summary), flush=True)
    except GaplessError as exc:
        print(f"gapless bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0 if summary.failed == 0 else 1


def _misuse(args: argparse.Namespace) -> str | None:
    """An option the chosen mode would ignore, or None."""
    if args.speed:
        for name, default in _NOT_SPEED.items():
            if getattr(args, name) != default:
                return f"--{name.replace('_', '-')} has no effect with --speed: drop it"
        if args.bind != "127.0.0.1:0":
            return "--bind has no effect with --speed (each run takes a free port): drop it"
        return None
    for name in _SPEED_ONLY:
        if getattr(args, name) is not None:
            return f"--{name.replace('_', '-')} needs --speed: add it, or drop --{name}"
    return None


def _speed(args: argparse.Namespace) -> int:
    """``gapless bench --speed``: run every row, print the table; 1 if anything failed."""
    from .speed import SpeedConfig, run_speed
    from .speed_report import format_speed, summarize_speed, write_speed_json
    from .speed_servers import SERVER_KINDS

    config = SpeedConfig(
        seconds=args.duration or 20.0,
        reload_every=args.reload_every or 2.0,
        rounds=args.rounds or 3,
        servers=args.servers or SERVER_KINDS,
        connections=args.connections,
        rate=args.rate,
        pin=args.pin,
        timeout=args.timeout,
    )
    try:
        result = run_speed(config)
        if args.json:
            write_speed_json(result, args.json)
    except GaplessError as exc:
        print(f"gapless bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(format_speed(result), flush=True)
    summaries = summarize_speed(result)
    return 1 if any(s.failed or s.errors for s in summaries) else 0


def _servers(text: str) -> tuple[str, ...]:
    kinds = tuple(kind.strip() for kind in text.split(",") if kind.strip())
    known = ("uvicorn", "granian")
    bad = [kind for kind in kinds if kind not in known]
    if not kinds or bad:
        raise argparse.ArgumentTypeError(
            f"invalid --servers {text!r}: give a comma-separated list of {', '.join(known)}"
        )
    return kinds


def _address(text: str) -> TcpAddress:
    address = parse_bind(text).address
    if not isinstance(address, TcpAddress):
        raise BenchError(f"invalid --bind {text!r}: the bench needs HOST:PORT, e.g. 127.0.0.1:0")
    return address


_count = whole_number(0)
_at_least_one = whole_number(1)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


if __name__ == "__main__":
    sys.exit(main())
