"""One generation of ``gapless serve``: a Python web application on inherited sockets.

::

    python -m gapless.serving.child MODULE:APP [--interface auto|asgi|wsgi|aiohttp]
        [--server uvicorn|hypercorn|granian] [--workers N] [--hooks MODULE]
        [--drain-timeout S] [--keep-alive S] [--read-timeout S] [--max-header-size B]
        [--http auto|h11|httptools] [--limit-concurrency N] [--threads N] [--ws-grace S]
        [--certfile F --keyfile F] [--factory] [--bind ADDRESS]...
        [--no-access-log] [--log-level LEVEL]

It takes the listening sockets its manager (``gapless run``, ``gapless serve``
or systemd) passed as ``LISTEN_FDS``, or opens ``--bind`` ones when started
alone; runs the ``before_upgrade`` hook; imports the application afresh;
serves every socket; sends ``READY=1`` to ``NOTIFY_SOCKET`` only once the
application's startup (ASGI lifespan, aiohttp ``on_startup``) completed and the
sockets are being served; and on SIGTERM or SIGINT sends ``STOPPING=1`` and
drains by the contract of :mod:`gapless.integrations` within
``--drain-timeout`` (a second signal cuts at once), logging how many
connections the deadline cut. With ``--workers N`` it forks N workers that
share the sockets (:mod:`gapless.serving.prefork`) and is ready when all of them are.

Exit codes: 0 after the drain (a cut is logged, not an error); 2 a bad command
line, or an option the server would ignore (e.g. ``--http`` with hypercorn;
with ``--interface auto`` this is known once the application is loaded); 3 the
application or a hook could not be loaded or started.

Example::

    gapless run --bind :8000 -- python -m gapless.serving.child myapp:app
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence

from ..cli_args import EXIT_USAGE, Parser
from ..errors import GaplessError, OptionIgnoredError, ServeError
from ..hooks import Hooks
from ..integrations.common import ServeOptions, no_delay
from ..sockets.addresses import parse_bind
from ..sockets.listeners import open_listener
from ..systemd.listen_fds import consume_listen_fds
from .apps import detect_interface, load_app, load_hooks, serve
from .options import add_child_options, check_honoured, options_from_args

__all__ = [
    "EXIT_STARTUP",
    "AppSpec",
    "build_parser",
    "detect_interface",
    "load_app",
    "main",
    "run_generation",
    "serve",
    "take_sockets",
]

logger = logging.getLogger("gapless.serve")

EXIT_STARTUP = 3  # uvicorn's STARTUP_FAILURE too, so a manager sees one code


def build_parser() -> argparse.ArgumentParser:
    """The runner's command line."""
    parser = Parser(
        prog="python -m gapless.serving.child",
        description="Serve a Python web application on inherited sockets; drain on SIGTERM.",
    )
    add_child_options(parser)
    return parser


def take_sockets(binds: Sequence[str]) -> list[tuple[str | None, socket.socket]]:
    """The inherited listening sockets with their names (``LISTEN_FDNAMES``), or
    sockets opened for ``binds`` (``[NAME=]ADDRESS``) when none are.

    Raises:
        ServeError: no socket inherited and no bind given, or binds given as well.
        GaplessError: the ``LISTEN_*`` variables, a bind or a socket is bad.
    """
    inherited = consume_listen_fds()
    if inherited and binds:
        raise ServeError("--bind given but sockets were inherited (LISTEN_FDS): drop --bind")
    if inherited:
        return inherited
    if not binds:
        raise ServeError(
            "no listening socket: run under gapless run or systemd socket activation, "
            "or pass --bind ADDRESS"
        )
    opened = [(bind.name, open_listener(bind)) for bind in map(parse_bind, binds)]
    for _, sock in opened:
        no_delay(sock)  # a manager sets it on the sockets it passes; alone, we do
    return opened


class AppSpec:
    """What one generation runs: how to get the application, and how to serve it.

    Args:
        load: returns the application; called after the ``before_upgrade`` hook,
            in each worker when there are several (so each imports it afresh).
        interface: ``auto``, ``asgi``, ``wsgi`` or ``aiohttp``.
        server: ``uvicorn`` or ``hypercorn`` for ASGI and WSGI, ``granian`` for ASGI.
        options: the serving options.
        hooks: run at the points of the generation's life (see :mod:`gapless.serving.apps`).
        workers: processes sharing the sockets.
        apps: further applications by socket name, each served by a process of
            its own on the sockets of that name (an admin app on its own bind);
            ``load`` serves the other sockets.
    """

    def __init__(
        self,
        load: Callable[[], object],
        *,
        interface: str = "auto",
        server: str = "uvicorn",
        options: ServeOptions | None = None,
        hooks: Hooks | None = None,
        workers: int = 1,
        apps: Mapping[str, Callable[[], object]] | None = None,
    ) -> None:
        self.load = load
        self.apps = dict(apps or {})
        self.interface = interface
        self.server = server
        self.options = options or ServeOptions()
        self.hooks = hooks or Hooks()
        self.workers = workers


def run_generation(generation: AppSpec, sockets: Sequence[tuple[str | None, socket.socket]]) -> int:
    """Run one generation on ``sockets`` (named) until it is stopped and drained.

    Returns:
        The exit code: 0 after the drain.

    Raises:
        GaplessError: a hook vetoed the start (HookError), or the application
            could not be loaded or served (ServeError).
    """
    hooks = generation.hooks
    units = _units(generation, sockets)
    hooks.run("before_upgrade")
    if len(units) == 1:
        load, socks = units[0]
        return _serve_once(generation, load, socks, hooks)
    from .prefork import run_workers

    works = [functools.partial(_serve_once, generation, *unit, Hooks()) for unit in units]
    return run_workers(works, hooks)


Unit = tuple[Callable[[], object], list[socket.socket]]


def _units(generation: AppSpec, sockets: Sequence[tuple[str | None, socket.socket]]) -> list[Unit]:
    """What each process serves: the main application on the sockets no other
    application names, ``workers`` times; each further application once."""
    units: list[Unit] = []
    for name, load in generation.apps.items():
        named = [sock for owner, sock in sockets if owner == name]
        if not named:
            raise ServeError(f"--app {name}=... names no socket: add --bind {name}=ADDRESS")
        units.append((load, named))
    rest = [sock for owner, sock in sockets if owner not in generation.apps]
    if not rest:
        raise ServeError("every socket is taken by an --app: add a --bind for MODULE:APP")
    return [(generation.load, rest)] * generation.workers + units


def _serve_once(
    generation: AppSpec,
    load: Callable[[], object],
    sockets: Sequence[socket.socket],
    hooks: Hooks,
) -> int:
    app = load()
    interface = generation.interface
    if interface == "auto":
        interface = detect_interface(app)
    report = serve(app, interface, generation.server, sockets, generation.options, hooks)
    hooks.run("after_shutdown")
    if not report.clean:
        # Requests cut at the deadline may leave worker threads (WSGI) that would
        # hold the interpreter's exit; the drain is over, so leave now.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(0)
    return 0


#: What a generation imports besides its application, by server: the fork server
#: (gapless.run.zygote) imports these once, so a warm generation does not.
_STACKS = {
    "uvicorn": (
        "gapless.integrations.uvicorn",
        "uvicorn.protocols.http.httptools_impl",
        "uvicorn.protocols.http.h11_impl",
        "uvicorn.protocols.websockets.auto",
        "uvicorn.lifespan.on",
        "uvicorn.loops.asyncio",
        "uvicorn.middleware.proxy_headers",
        "gapless.integrations.wsgi",
    ),
    "hypercorn": ("gapless.integrations.hypercorn", "hypercorn.asyncio", "hypercorn.protocol"),
    "aiohttp": ("gapless.integrations.aiohttp", "aiohttp.web"),
    "granian": ("gapless.integrations.granian",),
}


def warm_up(argv: Sequence[str]) -> None:
    """Import what a generation started with ``argv`` imports besides its
    application (called by the fork server, gapless.run.zygote)."""
    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit:  # the generation itself will say what is wrong
        return
    stack = "aiohttp" if args.interface == "aiohttp" else args.server
    for module in _STACKS.get(stack, ()):
        # Not installed: the generation says so if it needs it.
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one generation; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    if (args.certfile is None) != (args.keyfile is None):
        print("gapless serve: error: give --certfile and --keyfile together", file=sys.stderr)
        return EXIT_USAGE
    try:
        # With --interface auto, serve() checks again once it knows the interface.
        check_honoured(vars(args), args.interface, args.server)
        _check_readable(certfile=args.certfile, keyfile=args.keyfile)
        sockets = take_sockets(args.bind)
        generation = AppSpec(
            lambda: load_app(args.app, factory=args.factory),
            interface=args.interface,
            server=args.server,
            options=options_from_args(args),
            hooks=load_hooks(args.hooks) if args.hooks else None,
            workers=args.workers,
            apps=_apps(args.app_by_name),
        )
        return run_generation(generation, sockets)
    except OptionIgnoredError as exc:
        print(f"gapless serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GaplessError as exc:
        print(f"gapless serve: error: {exc}", file=sys.stderr)
        return EXIT_STARTUP


def _apps(specs: Sequence[str]) -> dict[str, Callable[[], object]]:
    apps: dict[str, Callable[[], object]] = {}
    for text in specs:
        name, _, spec = text.partition("=")
        apps[name] = functools.partial(load_app, spec)
    return apps


def _check_readable(**files: str | None) -> None:
    # Each generation reads them afresh; a missing one should say so in one line.
    for option, path in files.items():
        if path is not None and not os.access(path, os.R_OK):
            raise ServeError(f"cannot read --{option} {path!r}: check the path and permissions")


def configure_logging(level: str) -> None:
    """Log ``gapless.*`` to stderr, one line each, with the process id."""
    root = logging.getLogger("gapless")
    if not root.handlers:
        handler = logging.StreamHandler()
        fmt = "%(levelname)-8s gapless[%(process)d]: %(message)s"
        handler.setFormatter(logging.Formatter(fmt))
        root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


if __name__ == "__main__":
    sys.exit(main())
