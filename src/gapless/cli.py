"""The ``gapless`` command line. The only module that exits the process.

Over 300 lines on purpose: the usage of every subcommand sits in one file, so
``gapless --help`` and this module read alike; shared argument types live in
:mod:`gapless.cli_args`, ``gapless serve``'s options in :mod:`gapless.serving.options`.

::

    gapless run [--bind [NAME=]ADDRESS]... [--control PATH] [--pid-file PATH]
                [--ready auto|notify|accept|delay:SECONDS] [--ready-timeout SECONDS]
                [--drain-timeout SECONDS] [--stop-signal SIGNAL] [--log-format text|json]
                [--handoff[=PATH]] [--handoff-timeout SECONDS]
                [--shutdown-delay SECONDS] [--health-bind ADDRESS]
                [--before-reload CMD] [--on-ready CMD] [--on-reload-failed CMD]
                [--hook-timeout SECONDS]
                [--config PATH] [--print-config]
                -- COMMAND [ARG]...
    gapless reload [--cold] [--control PATH]
    gapless status [--control PATH] [--json]
    gapless stop   [--control PATH]
    gapless upgrade [--control PATH] [--python PATH]
    gapless demo   [--reloads N] [--duration SECONDS | --interval SECONDS] [--output DIR]
                   [--no-wrk]

Exit codes: 0 done; 1 failed (a reload that failed, no manager, a socket that
could not be opened); 2 misuse of the command line, with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ._version import __version__
from .cli_args import (
    EXIT_USAGE,
    HOOK_GROUP,
    HOOK_OPTIONS,
    RESTART_GROUP,
    RESTART_OPTIONS,
    Parser,
    bind,
    nonempty_path,
    positive_seconds,
    usage_error,
    whole_number,
)
from .errors import GaplessError, SettingsError
from .run.eventlog import LOG_FORMATS
from .serving import cli as serve_cli
from .settings import (
    Layers,
    add_config_options,
    config_path,
    resolve,
    settings_of,
    shown,
    subcommands,
)
from .settings_file import render

#: The subcommands whose every option may also come from GAPLESS_<OPTION> or a config
#: file, and the platform variables (Heroku's PORT...) each honours.
CONFIGURED = {"run": (), "serve": serve_cli.PLATFORM}

_RUN_HELP = """\
Run COMMAND as generations on sockets the manager keeps: each generation gets them
as LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID (fd 3 onward, in --bind order) and a
NOTIFY_SOCKET. `gapless reload` or SIGHUP starts the next generation; once it is
ready the previous one gets --stop-signal and drains. SIGTERM, SIGINT or
`gapless stop` drain everything and exit 0; a second TERM or INT hurries.

The control socket defaults to $XDG_RUNTIME_DIR/gapless/ (root: /run/gapless/,
others: /tmp/gapless-UID/), named after the working directory, so reload, status
and stop run in the same directory find this manager without --control."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gapless", description="Zero-downtime restarts for socket servers.")
    parser.add_argument("--version", action="version", version=f"gapless {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_run(commands)
    serve_cli.add_parser(commands)
    for name in CONFIGURED:
        add_config_options(commands.choices[name])
    commands.add_parser(
        "bench",
        help="measure failed requests, latency and reload time under load",
        add_help=False,  # `gapless bench --help` is bench's own
    )
    for name, what in (
        ("reload", "start a new generation and wait until it serves or failed"),
        ("status", "show the generations, the listeners and the last reload"),
        ("stop", "drain every generation, then stop the manager"),
        ("upgrade", "exec a new gapless in the manager, keeping its pid, sockets and children"),
    ):
        sub = commands.add_parser(name, help=what, description=what)
        sub.add_argument(
            "--control", type=nonempty_path, metavar="PATH", help="the manager's control socket"
        )
        if name == "status":
            sub.add_argument("--json", action="store_true", help="print JSON, for scripts")
        if name == "reload":
            sub.add_argument(
                "--cold",
                action="store_true",
                help="start the new generation cold, not forked from the fork server, "
                "and start a new fork server once it is ready",
            )
        if name == "upgrade":
            sub.add_argument(
                "--python",
                type=nonempty_path,
                metavar="PATH",
                help="the interpreter to exec (default: the same)",
            )
    demo = commands.add_parser(
        "demo", help="run the demo server under load and upgrade it again and again"
    )
    demo.add_argument("--reloads", type=_positive_int, default=10, help="default 10")
    length = demo.add_mutually_exclusive_group()
    length.add_argument("--duration", type=positive_seconds, help="seconds of load (default 15)")
    length.add_argument("--interval", type=positive_seconds, help="or: seconds between reloads")
    demo.add_argument("--output", metavar="DIR", help="for the JSON and PNG (default: a temp dir)")
    demo.add_argument("--no-wrk", dest="wrk", action="store_const", const=False, help="prober only")
    return parser


def _add_run(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run a server as generations on sockets gapless keeps",
        description=_RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--bind", action="append", default=[], type=bind, metavar="[NAME=]ADDRESS",
        help="a socket to listen on (HOST:PORT, [V6]:PORT, unix:PATH, fd://N); repeatable",
    )  # fmt: skip
    run.add_argument(
        "--control", type=nonempty_path, metavar="PATH",
        help="the control socket (default: see above)",
    )  # fmt: skip
    run.add_argument(
        "--pid-file", type=nonempty_path, metavar="PATH",
        help="write the manager's (stable) PID here",
    )  # fmt: skip
    run.add_argument(
        "--ready", default="auto", type=_ready, metavar="auto|notify|accept|delay:SECONDS",
        help="how a generation shows it is ready: READY=1 on NOTIFY_SOCKET (notify), "
        "accepting on its sockets (accept), whichever comes first (auto, the default), "
        "or a fixed delay (a weak fallback)",
    )  # fmt: skip
    run.add_argument(
        "--ready-timeout", type=positive_seconds, default=60.0, metavar="SECONDS",
        help="kill a generation not ready by then (default 60)",
    )  # fmt: skip
    run.add_argument(
        "--drain-timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
        help="SIGKILL a draining generation's process group after this (default 30)",
    )  # fmt: skip
    run.add_argument(
        "--stop-signal", type=_signal, default=signal.SIGTERM, metavar="SIGNAL",
        help="what tells a generation to drain (default TERM)",
    )  # fmt: skip
    run.add_argument("--log-format", choices=LOG_FORMATS, default="text", help="default text")
    _add_restart_options(run)
    hooks = run.add_argument_group(HOOK_GROUP)
    for option in HOOK_OPTIONS:
        option.add_to(hooks)
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG]...")


def _add_restart_options(run: argparse.ArgumentParser) -> None:
    group = run.add_argument_group(RESTART_GROUP)
    for option in RESTART_OPTIONS:
        option.add_to(group)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:
        # bench parses its own options (and its -- COMMAND) from the rest.
        from .bench.cli import main as bench_main

        return bench_main(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    if args.command == "run" and args.argv[:1] == ["--"]:
        args.argv = args.argv[1:]  # the separator is not part of COMMAND (nor of --print-config's)
    if args.command in CONFIGURED:
        try:
            printed = _configure(parser, arguments, args)
        except SettingsError as exc:
            print(f"gapless {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if printed is not None:
            print(printed)
            return 0
    try:
        if args.command == "run":
            return _run(parser, args)
        if args.command == "serve":
            return serve_cli.run(args, {**_restart_settings(args), **_hook_settings(args)})
        if args.command in ("reload", "status", "stop", "upgrade"):
            return _control(args)
        if args.command == "demo":
            return _demo(args)
    except GaplessError as exc:
        print(f"gapless: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


def _configure(
    parser: argparse.ArgumentParser, arguments: list[str], args: argparse.Namespace
) -> str | None:
    """Fill in ``args`` from the environment and the config file; the text of
    ``--print-config`` if asked, else None."""
    parsers = subcommands(parser)
    layers = Layers(
        parser=parsers[args.command],
        argv=arguments[arguments.index(args.command) + 1 :],
        environ=os.environ,
        platform=CONFIGURED[args.command],
        neighbours=frozenset(
            setting.key for name in CONFIGURED for setting in settings_of(parsers[name])
        ),
    )
    sources = resolve(layers, args)
    args.setting_sources = sources  # serve tells a --bind given from one not given
    if not args.print_config:
        return None
    rows = shown(layers.parser, args, sources)
    return render(args.command, rows, config_path(args, os.environ))


def _demo(args: argparse.Namespace) -> int:
    from .demo.run import DEFAULT_DURATION, DEFAULT_OUTPUT, run_demo

    duration = DEFAULT_DURATION if args.duration is None else args.duration
    if args.interval is not None:
        duration = args.interval * (args.reloads + 1)
    output = DEFAULT_OUTPUT if args.output is None else args.output
    summary = run_demo(reloads=args.reloads, duration=duration, output=output, wrk=args.wrk)
    return 0 if summary.failed == 0 else 1


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .run.config import ManagerConfig
    from .run.launch import start

    command = args.argv
    if not command:
        usage_error("gapless run", "missing COMMAND: gapless run [OPTIONS] -- COMMAND [ARG]...")
    config = ManagerConfig(
        command=command,
        binds=args.bind,
        control_path=args.control,
        pid_file=args.pid_file,
        ready=args.ready,
        ready_timeout=args.ready_timeout,
        drain_timeout=args.drain_timeout,
        stop_signal=args.stop_signal,
        log_format=args.log_format,
        **_restart_settings(args),
        **_hook_settings(args),
    )
    return start(config)


def _restart_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ManagerConfig fields of the restart options, shared by run and serve."""
    return {
        "handoff_path": _handoff_path(args),
        "handoff_timeout": args.handoff_timeout,
        "shutdown_delay": args.shutdown_delay,
        "health_bind": args.health_bind,
    }


def _hook_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ManagerConfig fields of the hook options, shared by run and serve."""
    return {option.name: getattr(args, option.name) for option in HOOK_OPTIONS}


def _handoff_path(args: argparse.Namespace) -> str | None:
    if args.handoff is None or args.handoff:
        return None if args.handoff is None else str(args.handoff)
    from .run.control import default_control_path

    return default_handoff_path(args.control or default_control_path())


def default_handoff_path(control_path: str) -> str:
    """``--handoff`` without PATH: beside the control socket, e.g. ``app.handoff.sock``."""
    return control_path.removesuffix(".sock") + ".handoff.sock"


def _control(args: argparse.Namespace) -> int:
    from .run.control import call, default_control_path

    path = args.control or default_control_path()
    # Relative to the caller's directory, not the manager's (which may be elsewhere).
    upgrade = args.command == "upgrade" and args.python
    fields: dict[str, Any] = {"python": os.path.abspath(args.python)} if upgrade else {}
    if args.command == "reload" and args.cold:
        fields["cold"] = True
    show = None if args.command == "status" else _print_progress
    answer = call(path, args.command, on_progress=show, **fields)
    if not answer.get("ok"):
        print(f"gapless {args.command}: {answer.get('error')}", file=sys.stderr)
        for line in answer.get("stderr") or []:
            print(f"  | {line}", file=sys.stderr)
        return 1
    if args.command == "status":
        print(json.dumps(answer, indent=2) if args.json else format_status(answer))
    elif args.command == "reload":
        print(f"reload done: {answer.get('message')}")
    elif args.command == "upgrade":
        print(answer.get("message"), flush=True)
        # The control socket survives the exec: this waits until the new code serves.
        manager = call(path, "status")["manager"]
        print(f"upgraded: pid {manager['pid']} runs gapless {manager['version']} now")
    else:
        print("stopped")
    return 0


def _print_progress(line: str) -> None:
    print(line, flush=True)


def format_status(answer: dict[str, Any]) -> str:
    """The text of ``gapless status`` from the manager's JSON answer."""
    manager = answer["manager"]
    lines = [
        f"manager pid {manager['pid']}, {manager['state']} for {_age(manager['uptime'])}, "
        f"ready mode {manager['ready']}, control {manager['control']}",
        "listeners:",
    ]
    lines += [f"  {item['name'] or '-':<12} {item['address']}" for item in answer["listeners"]]
    lines.append("generations:")
    row = "  {:<5} {:<9} {:<8} {:<5} {:<10} {:<10} {:<14} {:<6} {}"
    header = ("GEN", "STATE", "PID", "START", "AGE", "READY IN", "DRAIN DEADLINE", "CONNS", "PIDS")
    lines.append(row.format(*header))
    for gen in answer["generations"]:
        latency = gen["ready_latency"]
        deadline = gen["drain_deadline"]
        connections = gen.get("connections")  # a draining generation's, else None
        lines.append(
            row.format(
                gen["generation"],
                gen["state"],
                gen["pid"] or "-",
                gen.get("start") or "-",
                _age(gen["age"]),
                "-" if latency is None else f"{latency * 1000:.0f} ms",
                "-" if deadline is None else f"in {_age(deadline)}",
                "-" if connections is None else connections,
                " ".join(str(pid) for pid in gen["pids"]) or "-",
            )
        )
    last = answer["last_reload"]
    if last is not None:
        outcome = "ok" if last["ok"] else "FAILED"
        lines.append(f"last reload: {outcome}, {last['reason']} ({_age(last['ago'])} ago)")
    return "\n".join(lines)


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _ready(text: str) -> object:
    from .run.manager import ReadyMode

    try:
        return ReadyMode.parse(text)
    except GaplessError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _signal(text: str) -> signal.Signals:
    from .proc.signals import parse_signal

    try:
        return parse_signal(text)
    except GaplessError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_positive_int = whole_number(1)


if __name__ == "__main__":
    sys.exit(main())
