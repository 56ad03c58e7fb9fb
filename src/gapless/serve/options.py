"""The options of one ``gapless serve`` generation, declared once.

``gapless serve`` (the manager) and ``python -m gapless.serve.child`` (one
generation) take the same options: the manager parses them with the parser
built here, so a mistake is reported before anything starts, and hands them on
to each generation with :func:`child_argv`, which writes back every option
that differs from its default.

Example::

    parser = argparse.ArgumentParser()
    add_child_options(parser)
    args = parser.parse_args(["app:app", "--keep-alive", "10"])
    child_argv(args)              # ['app:app', '--keep-alive', '10.0']
    options_from_args(args)       # ServeOptions(keep_alive=10.0, ...)
"""

from __future__ import annotations

import argparse

from ..integrations.common import ServeOptions

__all__ = [
    "INTERFACES",
    "SERVERS",
    "add_child_options",
    "child_argv",
    "named_app",
    "options_from_args",
    "positive",
    "seconds",
]

INTERFACES = ("auto", "asgi", "wsgi", "aiohttp")
SERVERS = ("uvicorn", "hypercorn")


def seconds(text: str) -> float:
    """argparse type: a number of seconds from 0, below a million."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e6:
        raise argparse.ArgumentTypeError(f"invalid seconds {text!r}: give a number from 0")
    return value


def positive(text: str) -> int:
    """argparse type: a whole number above 0."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: give a whole number above 0")
    return int(text)


def named_app(text: str) -> str:
    """argparse type: ``NAME=MODULE:APP``, an application for the sockets named NAME."""
    name, sep, spec = text.partition("=")
    module, colon, attribute = spec.partition(":")
    if not sep or not name or not module or not colon or not attribute:
        raise argparse.ArgumentTypeError(
            f"invalid --app {text!r}: write NAME=MODULE:APP, e.g. admin=myapp.admin:app"
        )
    return text


def add_child_options(parser: argparse.ArgumentParser, *, standalone: bool = True) -> None:
    """Add the application and its serving options to ``parser``.

    Args:
        parser: the parser of ``gapless serve`` or of ``gapless.serve.child``.
        standalone: add the child's own ``--bind``, for a child started alone
            (``gapless serve`` has its manager's ``--bind`` instead).
    """
    add = parser.add_argument
    add("app", metavar="MODULE:APP", help="the application, e.g. myapp:app")
    add("--interface", choices=INTERFACES, default="auto", help="default: detected from APP")
    add("--server", choices=SERVERS, default="uvicorn", help="for ASGI (default uvicorn)")
    add("--factory", action="store_true", help="APP is a factory to call for the application")
    add("--workers", type=positive, default=1, metavar="N", help="processes sharing the sockets")
    add("--hooks", metavar="MODULE", help="a module with before_upgrade, on_ready... functions")
    add(
        "--app", dest="app_by_name", action="append", default=[], type=named_app,
        metavar="NAME=MODULE:APP", help="serve another app on the sockets named NAME; repeatable",
    )  # fmt: skip
    add(
        "--drain-timeout", type=seconds, default=30.0, metavar="S",
        help="cut what remains this long after the stop signal (default 30)",
    )  # fmt: skip
    add("--keep-alive", type=seconds, default=5.0, metavar="S", help="idle keep-alive (default 5)")
    add(
        "--read-timeout", type=seconds, default=None, metavar="S",
        help="close a connection silent this long mid-request (hypercorn, aiohttp)",
    )  # fmt: skip
    add(
        "--max-header-size", type=positive, default=16384, metavar="BYTES",
        help="refuse a request head larger than this (default 16384; not httptools)",
    )  # fmt: skip
    add("--http", choices=("auto", "h11", "httptools"), default="auto", help="uvicorn's parser")
    add("--limit-concurrency", type=positive, default=None, metavar="N", help="503 beyond N")
    add("--threads", type=positive, default=10, metavar="N", help="WSGI worker threads")
    add("--ws-grace", type=seconds, default=1.0, metavar="S", help="WebSocket close grace")
    add("--certfile", default=None, metavar="FILE", help="serve TLS with this certificate")
    add("--keyfile", default=None, metavar="FILE", help="the certificate's private key")
    if standalone:
        add("--bind", action="append", default=[], metavar="ADDRESS", help="without LISTEN_FDS")
    add("--no-access-log", dest="access_log", action="store_false", help="no line per request")
    add("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info")


def child_argv(args: argparse.Namespace) -> list[str]:
    """The command line arguments that give a child the same options as ``args``.

    Args:
        args: parsed by a parser with :func:`add_child_options`; only the options
            declared there are written back, not the child's own ``--bind``.

    Returns:
        ``MODULE:APP`` followed by every option that differs from its default.
    """
    probe = argparse.ArgumentParser(add_help=False)
    add_child_options(probe, standalone=False)  # a child under a manager has no --bind
    argv: list[str] = []
    for action in probe._actions:
        value = getattr(args, action.dest)
        if not action.option_strings:
            argv.insert(0, str(value))
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                argv += [action.option_strings[0], str(item)]
        elif value != action.default:
            flag = action.option_strings[0]
            argv += [flag] if action.nargs == 0 else [flag, str(value)]
    return argv


def options_from_args(args: argparse.Namespace) -> ServeOptions:
    """The :class:`ServeOptions` of a parsed command line."""
    return ServeOptions(
        drain_timeout=args.drain_timeout,
        keep_alive=args.keep_alive,
        read_timeout=args.read_timeout,
        max_header_size=args.max_header_size,
        http=args.http,
        limit_concurrency=args.limit_concurrency,
        threads=args.threads,
        access_log=args.access_log,
        log_level=args.log_level,
        certfile=args.certfile,
        keyfile=args.keyfile,
        ws_grace=args.ws_grace,
    )
