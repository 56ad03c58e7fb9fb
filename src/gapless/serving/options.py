"""The options of ``gapless serve``, declared once.

:data:`OPTIONS` is the one table: each option's flag, type, default, help,
who reads it (the manager, or each generation too) and which servers honour
it. From it come the parser of ``gapless serve`` (:func:`add_serve_options`),
the parser of one generation, ``python -m gapless.serving.child``
(:func:`add_child_options`), the command line the manager hands each
generation (:func:`child_argv`), the refusal of an option the chosen server
would ignore (:func:`check_honoured`) and the option table of docs/serve.md
(:func:`markdown_table`; ``python -m gapless.serving.options`` prints it).

Example::

    parser = argparse.ArgumentParser()
    add_child_options(parser)
    args = parser.parse_args(["app:app", "--keep-alive", "10"])
    child_argv(args)              # ['app:app', '--keep-alive', '10.0']
    options_from_args(args)       # ServeOptions(keep_alive=10.0, ...)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Iterator, Mapping
from typing import Any

from ..cli_args import (
    HOOK_GROUP,
    HOOK_OPTIONS,
    RESTART_GROUP,
    RESTART_OPTIONS,
    Option,
    bind,
    duration,
)
from ..errors import OptionIgnoredError
from ..integrations.common import ServeOptions
from ..run.eventlog import LOG_FORMATS

__all__ = [
    "INTERFACES",
    "OPTIONS",
    "SERVERS",
    "STACKS",
    "add_child_options",
    "add_serve_options",
    "check_honoured",
    "child_argv",
    "markdown_table",
    "named_app",
    "options_from_args",
    "positive",
    "seconds",
    "stack_of",
]

INTERFACES = ("auto", "asgi", "wsgi", "aiohttp")
SERVERS = ("uvicorn", "hypercorn", "granian")
#: What serves in the end, by ``stack_of(interface, server)``, and its name in messages.
STACKS = {
    "uvicorn": "uvicorn",
    "hypercorn": "hypercorn",
    "aiohttp": "aiohttp",
    "wsgi-uvicorn": "WSGI on uvicorn",
    "wsgi-hypercorn": "WSGI on hypercorn",
    "granian": "granian",
    "wsgi-granian": "WSGI on granian",  # refused when serving: no drain written for it
}
_UVICORN = ("uvicorn", "wsgi-uvicorn")
_WSGI = ("wsgi-uvicorn", "wsgi-hypercorn")
_WEBSOCKETS = ("uvicorn", "hypercorn", "aiohttp", "granian")
_NOT_AIOHTTP = ("uvicorn", "hypercorn", "granian", *_WSGI)
_NOT_GRANIAN = ("uvicorn", "hypercorn", "aiohttp", *_WSGI)

#: Scopes: read by each generation (and handed to it), by a generation started
#: alone (its own --bind), or by the manager only.
CHILD, ALONE, MANAGER = "child", "alone", "manager"


def seconds(text: str) -> float:
    """argparse type: a duration from 0 below a million seconds: ``30``, ``500ms``, ``2m``."""
    return duration(text)


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


def _child(flag: str, help: str, **fields: Any) -> Option:
    return Option(flag, help, scope=CHILD, **fields)


OPTIONS: tuple[Option, ...] = (
    _child(
        "--interface", "how APP is served; detected by default",
        default="auto", choices=INTERFACES,
    ),
    _child(
        "--server", "for ASGI and WSGI (default uvicorn)",
        default="uvicorn", choices=SERVERS, servers=_NOT_AIOHTTP,
    ),
    _child("--factory", "APP is a factory to call for the application", default=False, kind="true"),
    _child("--workers", "processes sharing the sockets", default=1, type=positive, metavar="N"),
    _child("--hooks", "a module with before_upgrade, on_ready... functions", metavar="MODULE"),
    _child(
        "--app", "serve another app on the sockets named NAME; repeatable",
        kind="append", dest="app_by_name", type=named_app, metavar="NAME=MODULE:APP",
    ),
    _child(
        "--drain-timeout", "cut what remains this long after the stop signal (default 30)",
        default=30.0, type=seconds, metavar="S",
    ),
    _child("--keep-alive", "idle keep-alive (default 5)", default=5.0, type=seconds, metavar="S"),
    _child(
        "--read-timeout", "cut a request head not whole S after it began: 408 (default none)",
        type=seconds, metavar="S", servers=_NOT_GRANIAN,
    ),
    _child(
        "--max-header-size", "refuse a request head above this: 431 (default 16384)",
        default=16384, type=positive, metavar="BYTES",
    ),
    _child(
        "--http", "uvicorn's parser (default auto: httptools if installed)",
        default="auto", choices=("auto", "h11", "httptools"), servers=_UVICORN,
    ),
    _child(
        "--limit-concurrency", "503 beyond N connections or requests",
        type=positive, metavar="N", servers=_UVICORN,
    ),
    _child(
        "--threads", "worker threads of a WSGI application (default 10)",
        default=10, type=positive, metavar="N", servers=_WSGI,
    ),
    _child(
        "--ws-grace", "WebSocket close grace in a drain (default 1)",
        default=1.0, type=seconds, metavar="S", servers=_WEBSOCKETS,
    ),
    _child("--certfile", "serve TLS with this certificate", metavar="FILE"),
    _child("--keyfile", "the certificate's private key", metavar="FILE"),
    Option(
        "--bind", "without LISTEN_FDS: open this socket", kind="append", metavar="ADDRESS",
        scope=ALONE,
    ),
    _child(
        "--no-access-log", "no line per request", default=True, kind="false", dest="access_log"
    ),
    _child(
        "--log-level", "the generation's log level (default info)",
        default="info", choices=("critical", "error", "warning", "info", "debug"),
    ),
    Option(
        "--bind", "HOST:PORT, [V6]:PORT, unix:PATH or fd://N; repeatable (default 127.0.0.1:8000)",
        kind="append", type=bind, metavar="[NAME=]ADDRESS", scope=MANAGER,
    ),
    Option("--control", "the control socket (as gapless run)", metavar="PATH", scope=MANAGER),
    Option("--pid-file", "write the manager's (stable) PID here", metavar="PATH", scope=MANAGER),
    Option(
        "--no-fork-server",
        "start every generation cold: keep no fork server with the server stack imported",
        default=True, kind="false", dest="warm", scope=MANAGER,
    ),
    Option(
        "--ready-timeout", "kill a generation not ready by then (default 60)",
        default=60.0, type=seconds, metavar="S", scope=MANAGER,
    ),
    Option(
        "--log-format", "the manager's log format (default text)",
        default="text", choices=LOG_FORMATS, scope=MANAGER,
    ),
    *(dataclasses.replace(option, scope=MANAGER) for option in RESTART_OPTIONS),
    *(dataclasses.replace(option, scope=MANAGER) for option in HOOK_OPTIONS),
)  # fmt: skip


def add_child_options(parser: argparse.ArgumentParser, *, standalone: bool = True) -> None:
    """Add the application and the options of one generation to ``parser``.

    Args:
        parser: the parser of ``gapless serve`` or of ``gapless.serving.child``.
        standalone: add the child's own ``--bind``, for a child started alone
            (``gapless serve`` has its manager's ``--bind`` instead, and may
            leave ``MODULE:APP`` to its config file).
    """
    if standalone:
        parser.add_argument("app", metavar="MODULE:APP", help="the application, e.g. myapp:app")
    else:  # gapless serve may have it from its config file or GAPLESS_APP instead
        parser.add_argument(
            "app", metavar="MODULE:APP", nargs="?", help="the application, e.g. myapp:app"
        )
    scopes = (CHILD, ALONE) if standalone else (CHILD,)
    for option in OPTIONS:
        if option.scope in scopes:
            option.add_to(parser)


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """Add every option of ``gapless serve`` to ``parser``: a generation's and the
    manager's, the restart ones in a group of their own."""
    add_child_options(parser, standalone=False)
    restarts = parser.add_argument_group(RESTART_GROUP)
    hooks = parser.add_argument_group(HOOK_GROUP)
    groups = {option.flag: restarts for option in RESTART_OPTIONS}
    groups.update({option.flag: hooks for option in HOOK_OPTIONS})
    for option in OPTIONS:
        if option.scope == MANAGER:
            option.add_to(groups.get(option.flag, parser))


def child_argv(args: argparse.Namespace) -> list[str]:
    """The command line arguments that give a child the same options as ``args``.

    Returns:
        ``MODULE:APP`` followed by every generation's option that differs from
        its default (the manager's own, such as ``--bind``, are not written).
    """
    argv = [str(args.app)]
    for option in OPTIONS:
        if option.scope == CHILD:
            argv += option.argv(getattr(args, option.name))
    return argv


def options_from_args(args: argparse.Namespace) -> ServeOptions:
    """The :class:`ServeOptions` of a parsed command line."""
    fields = dataclasses.fields(ServeOptions)
    return ServeOptions(**{field.name: getattr(args, field.name) for field in fields})


def stack_of(interface: str, server: str) -> str:
    """What serves an application of ``interface`` with ``server``: a key of :data:`STACKS`."""
    if interface == "aiohttp":
        return "aiohttp"
    return f"wsgi-{server}" if interface == "wsgi" else server


def check_honoured(values: Mapping[str, Any], interface: str, server: str) -> None:
    """Refuse an option given (not at its default) that the server would ignore.

    Args:
        values: option values by name, e.g. ``vars(args)`` or a ServeOptions as a dict.
        interface: ``asgi``, ``wsgi``, ``aiohttp``, or ``auto`` (not known yet: only
            an option that every interface would ignore with ``server`` is refused).
        server: ``uvicorn``, ``hypercorn`` or ``granian``.

    Raises:
        OptionIgnoredError: naming the first such option and the server.
    """
    interfaces = INTERFACES[1:] if interface == "auto" else (interface,)
    stacks = {stack_of(each, server) for each in interfaces}
    for option in OPTIONS:
        if option.scope != CHILD or not option.servers or stacks & set(option.servers):
            continue
        if option.name in values and option.argv(values[option.name]):
            where = STACKS[stacks.pop()] if len(stacks) == 1 else server
            honoured = ", ".join(STACKS[name] for name in option.servers)
            raise OptionIgnoredError(
                f"{option.flag} is ignored by {where}: drop it (it applies to {honoured})"
            )


def markdown_table() -> str:
    """The option table of docs/serve.md."""
    rows = [
        "| option | default | honoured by | what it does |",
        "|---|---|---|---|",
        "| `MODULE:APP` | | all | the application, e.g. `myapp:app` |",
    ]
    for option in _documented():
        servers = ", ".join(STACKS[name] for name in option.servers) or "all"
        text = _DEFAULT_NOTE.sub("", option.help).replace("|", "\\|")
        rows.append(f"| `{_usage(option)}` | {option.shown_default} | {servers} | {text} |")
    return "\n".join(rows)


_DEFAULT_NOTE = re.compile(r" \(default [^)]*\)$")  # the table has a column for it


def _documented() -> Iterator[Option]:
    return (option for option in OPTIONS if option.scope in (CHILD, MANAGER))


def _usage(option: Option) -> str:
    if option.kind in ("true", "false"):
        return option.flag
    value = "|".join(option.choices) if option.choices else option.metavar or "VALUE"
    value = value.replace("|", "\\|")
    return f"{option.flag} [{value}]" if option.kind == "optional" else f"{option.flag} {value}"


if __name__ == "__main__":
    print(markdown_table())
