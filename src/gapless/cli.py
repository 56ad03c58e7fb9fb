"""The ``gapless`` command line. The only module that exits the process."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .errors import GaplessError

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gapless", description="Zero-downtime restarts for socket servers."
    )
    parser.add_argument("--version", action="version", version=f"gapless {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo", help="run the demo server under load and upgrade it again and again"
    )
    demo.add_argument("--reloads", type=_positive_int, default=10, help="default 10")
    demo.add_argument("--interval", type=float, default=0.5, help="seconds of load between reloads")
    demo.add_argument("--clients", type=_positive_int, default=4, help="client threads")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo_run import run_demo

            report = run_demo(reloads=args.reloads, interval=args.interval, clients=args.clients)
            return 0 if not report.failures else 1
    except GaplessError as exc:
        print(f"gapless: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


if __name__ == "__main__":
    sys.exit(main())
