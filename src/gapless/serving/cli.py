"""``gapless serve``: a Python web application with reloads that lose no request.

::

    gapless serve MODULE:APP [--bind [NAME=]ADDRESS]... [--interface auto|asgi|wsgi|aiohttp]
                  [--server uvicorn|hypercorn|granian] [--workers N] [--hooks MODULE]
                  [--drain-timeout S] [--certfile F --keyfile F] [limits...]
                  [--control PATH] [--pid-file PATH] [--no-fork-server] [--ready-timeout S]
                  [--log-format F] [--config PATH] [--print-config]

It is the manager of ``gapless run`` (one process with a stable PID that keeps
the sockets; SIGHUP or ``gapless reload`` starts a new generation, which
imports the application afresh) running ``python -m gapless.serving.child`` as
its generations, with readiness by ``READY=1`` only.

Started with sockets of its own (``LISTEN_FDS`` for its PID: under
``gapless run``, systemd socket activation or another manager), it is one
generation instead, exactly ``python -m gapless.serving.child``: whatever passed
the sockets also restarts it.

Otherwise what each generation would fail on at its start and can be told
without importing the application (``MODULE:APP`` malformed, a module not
found, uvicorn missing) is refused before a socket is bound: exit 2, one line.

Example::

    gapless serve myapp:app --bind :8000 --workers 4 &
    gapless reload       # a new generation, ready before the old one drains
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from ..cli_args import EXIT_USAGE
from ..errors import GaplessError, ServeError
from ..settings import Platform
from ..sockets.addresses import parse_bind
from .options import add_serve_options, check_honoured, child_argv

__all__ = [
    "DEFAULT_BIND",
    "DRAIN_MARGIN",
    "PLATFORM",
    "add_parser",
    "child_command",
    "inherited",
    "missing_module",
    "run",
]

DEFAULT_BIND = "127.0.0.1:8000"  # uvicorn's default
#: Seconds the manager adds to ``--drain-timeout`` before it kills a draining
#: generation: the generation cuts what remains itself at its deadline, then
#: runs the application's shutdown (lifespan, on_cleanup) and its hooks.
DRAIN_MARGIN = 5.0
#: What Heroku-style platforms set: the workers (above the config file, as a
#: GAPLESS_ variable is), and a port to serve on all interfaces when no --bind is
#: given anywhere (below the config file).
PLATFORM = (
    Platform("WEB_CONCURRENCY", "workers"),
    Platform("PORT", "bind", "0.0.0.0:{}", above_file=False),
)

_HELP = """\
Serve MODULE:APP (ASGI, WSGI or aiohttp) as generations on sockets this process
keeps. `gapless reload` or SIGHUP starts a new generation, which imports the
application afresh; once it is ready (its startup done, its sockets served) the
old one stops accepting, answers every request it holds, says `Connection: close`
on each response and exits. SIGTERM, SIGINT or `gapless stop` drain and exit.

Started with inherited sockets (LISTEN_FDS, e.g. under `gapless run` or systemd),
it serves as one generation instead, and --bind is refused."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``gapless`` command's subparsers; return its parser."""
    serve = subparsers.add_parser(
        "serve",
        help="serve a Python web application, reloaded without losing a request",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_options(serve)
    return serve  # type: ignore[no-any-return]


def inherited(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """True when this process was given sockets (``LISTEN_FDS`` with its own PID)."""
    env = os.environ if environ is None else environ
    return bool(env.get("LISTEN_FDS")) and env.get("LISTEN_PID") == str(os.getpid())


def child_command(args: argparse.Namespace) -> list[str]:
    """The command of each generation for the parsed ``gapless serve`` options."""
    return [sys.executable, "-m", "gapless.serving.child", *child_argv(args)]


def run(args: argparse.Namespace, restarts: Mapping[str, Any] | None = None) -> int:
    """Run ``gapless serve`` as parsed; returns the exit code (2: a misuse).

    ``args.setting_sources``, when :mod:`gapless.cli` set it, says where each
    setting came from (:func:`gapless.settings.resolve`): with inherited sockets
    only a ``--bind`` from the command line is refused, others are ignored.

    Raises:
        GaplessError: a bad setting (one line), a socket that cannot be opened.
    """
    misuse = _misuse(args)
    if misuse is not None:
        print(f"gapless serve: error: {misuse}; see gapless serve --help", file=sys.stderr)
        return EXIT_USAGE
    if inherited():
        # A bind from the environment or the file (PORT, GAPLESS_BIND) was meant for
        # whatever passed the sockets and handed its environment down: not a misuse.
        if args.bind and getattr(args, "setting_sources", {}).get("bind", "cli") == "cli":
            raise ServeError("--bind given but sockets were inherited (LISTEN_FDS): drop --bind")
        from .child import main as serve_child

        return serve_child(child_argv(args))
    for option in ("certfile", "keyfile"):
        path = getattr(args, option)
        if path is not None and not os.access(path, os.R_OK):
            raise ServeError(f"cannot read --{option} {path!r}: check the path and permissions")
    unservable = _unservable(args, os.getcwd())
    if unservable is not None:
        print(f"gapless serve: {unservable}", file=sys.stderr)
        return EXIT_USAGE
    from ..run.config import ManagerConfig, ReadyMode
    from ..run.launch import start

    return start(
        ManagerConfig(
            command=child_command(args),
            binds=args.bind or [parse_bind(DEFAULT_BIND)],
            control_path=args.control,
            pid_file=args.pid_file,
            ready=ReadyMode.parse("notify"),  # READY=1 after the startup: never accept alone
            ready_timeout=args.ready_timeout,
            drain_timeout=args.drain_timeout + DRAIN_MARGIN,
            stop_signal=signal.SIGTERM,
            log_format=args.log_format,
            warm=args.warm,
            **(restarts or {}),
        )
    )


def _misuse(args: argparse.Namespace) -> str | None:
    """What is wrong with options each fine alone, or None."""
    if args.app is None:
        return 'missing MODULE:APP: give it, or app = "MODULE:APP" in [serve] of gapless.toml'
    if (args.certfile is None) != (args.keyfile is None):
        return "give --certfile and --keyfile together"
    names = {bind.name for bind in args.bind}
    for text in [] if inherited() else args.app_by_name:  # inherited: the child checks
        name = text.partition("=")[0]
        if name not in names:
            return f"--app {text!r} names no socket: add --bind {name}=ADDRESS"
    try:  # with --interface auto, the generation checks again once it loaded APP
        check_honoured(vars(args), args.interface, args.server)
    except GaplessError as exc:
        return str(exc)
    return None


def _unservable(args: argparse.Namespace, directory: str) -> str | None:
    """What each generation would fail on at its start that can be told here, before
    a socket is bound, without importing the application; None if nothing."""
    module, _, attribute = args.app.partition(":")
    if not module or not attribute:
        return f"error: invalid application {args.app!r}: write MODULE:APP, e.g. myapp:app"
    named = [(module, args.app)]
    named += [
        (text.partition("=")[2].partition(":")[0], f"--app {text}") for text in args.app_by_name
    ]
    named += [(args.hooks, f"--hooks {args.hooks}")] if args.hooks else []
    for name, what in named:
        missing = missing_module(name, directory)
        if missing is not None:
            return (
                f"error: no module {missing!r} for {what!r} in {directory}: check the name, "
                "or serve from the directory that holds it (or set PYTHONPATH)"
            )
    return _uvicorn_missing(args, directory)


def missing_module(name: str, directory: str) -> str | None:
    """The first part of the dotted module ``name`` that a generation started in
    ``directory`` would not find, or None; found without importing any part of it.

    A part under a plain module (not a package) counts as found: only an import
    could tell.
    """
    top, *rest = name.split(".")
    saved = sys.path[:]
    sys.path.insert(0, directory)  # as gapless.serving.apps does before importing
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):  # ValueError: in sys.modules without a spec
        spec = None
    finally:
        sys.path[:] = saved
    found = top
    for part in rest:
        if spec is None or spec.submodule_search_locations is None:
            break
        locations = list(spec.submodule_search_locations)
        found = f"{found}.{part}"
        spec = importlib.machinery.PathFinder.find_spec(found, locations)
    return found if spec is None else None


def _uvicorn_missing(args: argparse.Namespace, directory: str) -> str | None:
    if args.server != "uvicorn" or args.interface == "aiohttp":
        return None
    if _importable("uvicorn", directory):
        return None
    message = "uvicorn is not installed: pip install 'gapless[serve]'"
    # auto: an aiohttp application would need no uvicorn, but that shows only on import.
    if args.interface == "auto" and importlib.util.find_spec("aiohttp") is not None:
        message += " (an aiohttp application: --interface aiohttp)"
    return message


def _importable(module: str, directory: str) -> bool:
    """Whether a generation could import ``module``: tried in a process of its own,
    so the manager, which lives long, does not hold the server stack."""
    if importlib.util.find_spec(module) is None:
        return False
    try:
        result = subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            cwd=directory, capture_output=True, timeout=30, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return True  # cannot tell: let the generation say
    return result.returncode == 0
