"""One generation of ``gapless serve``: a Python web application on inherited sockets.

::

    python -m gapless.serve_child MODULE:APP [--interface auto|asgi|wsgi]
        [--server uvicorn] [--drain-timeout S] [--keep-alive S]
        [--http auto|h11|httptools] [--limit-concurrency N] [--threads N] [--ws-grace S]
        [--certfile F --keyfile F] [--factory] [--bind ADDRESS]...
        [--no-access-log] [--log-level LEVEL]

It takes the listening sockets its manager (``gapless run``, ``gapless serve``
or systemd) passed as ``LISTEN_FDS``, or opens ``--bind`` ones when started
alone; imports the application afresh; serves every socket; sends ``READY=1``
to ``NOTIFY_SOCKET`` only once the ASGI lifespan startup completed and the
sockets are being served; and on SIGTERM or SIGINT sends ``STOPPING=1`` and
drains by the contract of :mod:`gapless.integrations` within
``--drain-timeout`` (a second signal cuts at once), logging how many
connections the deadline cut.

Exit codes: 0 after the drain (a cut is logged, not an error); 2 a bad command
line; 3 the application could not be loaded or started.

Example::

    gapless run --bind :8000 -- python -m gapless.serve_child myapp:app
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .addresses import parse_bind
from .errors import GaplessError, NotifyError, ServeError
from .inheritance import consume_listen_fds
from .integrations.common import ASGIApp, DrainReport, ServeOptions
from .listeners import listener_address, open_listener
from .notify import notify, ready

__all__ = ["build_parser", "detect_interface", "load_app", "main", "serve"]

logger = logging.getLogger("gapless.serve")

EXIT_USAGE = 2
EXIT_STARTUP = 3  # uvicorn's STARTUP_FAILURE too, so a manager sees one code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    """The runner's command line."""
    parser = _Parser(
        prog="python -m gapless.serve_child",
        description="Serve a Python web application on inherited sockets; drain on SIGTERM.",
    )
    parser.add_argument("app", metavar="MODULE:APP", help="the application, e.g. myapp:app")
    parser.add_argument("--interface", choices=("auto", "asgi", "wsgi"), default="auto")
    parser.add_argument("--server", choices=("uvicorn",), default="uvicorn")
    parser.add_argument("--drain-timeout", type=_seconds, default=30.0, metavar="S")
    parser.add_argument("--keep-alive", type=_seconds, default=5.0, metavar="S")
    parser.add_argument("--http", choices=("auto", "h11", "httptools"), default="auto")
    parser.add_argument("--limit-concurrency", type=_positive, default=None, metavar="N")
    parser.add_argument("--threads", type=_positive, default=10, metavar="N", help="WSGI")
    parser.add_argument("--ws-grace", type=_seconds, default=1.0, metavar="S")
    parser.add_argument("--certfile", default=None, metavar="FILE")
    parser.add_argument("--keyfile", default=None, metavar="FILE")
    parser.add_argument("--factory", action="store_true", help="APP is a factory to call")
    parser.add_argument(
        "--bind", action="append", default=[], metavar="ADDRESS", help="only without LISTEN_FDS"
    )
    parser.add_argument("--no-access-log", dest="access_log", action="store_false")
    parser.add_argument(
        "--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info"
    )
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e6:
        raise argparse.ArgumentTypeError(f"invalid seconds {text!r}: give a number from 0")
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: give a whole number above 0")
    return int(text)


def load_app(spec: str, *, factory: bool = False) -> object:
    """Import ``MODULE:ATTR`` (``ATTR`` may be dotted) from the working directory.

    Args:
        spec: e.g. ``myapp:app`` or ``pkg.web:factory.app``.
        factory: call the object found, with no arguments, to get the application.

    Returns:
        The application object.

    Raises:
        ServeError: the spec is malformed, the module cannot be imported (an
            error inside it is logged with its traceback), or the attribute is missing.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ServeError(f"invalid application {spec!r}: write MODULE:APP, e.g. myapp:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not _names_the_module(exc.name, module_name):  # a missing import inside the app
            logger.error("importing %s failed:\n%s", module_name, traceback.format_exc())
        raise ServeError(f"cannot import {module_name!r} for {spec!r}: {exc}") from None
    except Exception as exc:
        logger.error("importing %s failed:\n%s", module_name, traceback.format_exc())
        raise ServeError(f"cannot import {module_name!r} for {spec!r}: {exc!r}") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ServeError(
                f"no attribute {part!r} in {spec!r}: check the name after ':'"
            ) from None
    return obj() if factory else obj


def _names_the_module(missing: str | None, module_name: str) -> bool:
    return missing is not None and (module_name + ".").startswith(missing + ".")


def detect_interface(app: object) -> str:
    """``asgi`` if ``app`` (or its ``__call__``) is a coroutine function, else ``wsgi``.

    Args:
        app: the loaded application.

    Returns:
        ``asgi`` or ``wsgi``.

    Raises:
        ServeError: ``app`` is not callable.
    """
    if not callable(app):
        raise ServeError(f"the application {app!r} is not callable: point MODULE:APP at it")
    call = app if inspect.isfunction(app) else getattr(app, "__call__", None)  # noqa: B004
    return "asgi" if inspect.iscoroutinefunction(call) else "wsgi"


def take_sockets(binds: Sequence[str]) -> list[socket.socket]:
    """The inherited listening sockets, or sockets opened for ``binds`` when none are.

    Raises:
        ServeError: no socket inherited and no bind given, or binds given as well.
        GaplessError: the ``LISTEN_*`` variables, a bind or a socket is bad.
    """
    inherited = [sock for _, sock in consume_listen_fds()]
    if inherited and binds:
        raise ServeError("--bind given but sockets were inherited (LISTEN_FDS): drop --bind")
    if inherited:
        return inherited
    if not binds:
        raise ServeError(
            "no listening socket: run under gapless run or systemd socket activation, "
            "or pass --bind ADDRESS"
        )
    return [open_listener(parse_bind(text)) for text in binds]


def serve(
    app: object, interface: str, sockets: Sequence[socket.socket], options: ServeOptions
) -> DrainReport:
    """Serve ``app`` on ``sockets``, send ``READY=1`` when served, drain on SIGTERM.

    Raises:
        ServeError: the interface or a server package is missing.
    """
    names = ", ".join(str(listener_address(sock)) for sock in sockets)

    def on_ready() -> None:
        logger.info("serving %s (%s) on %s, pid %d", interface, options.http, names, os.getpid())
        try:
            ready(status=f"serving on {names}")
        except NotifyError as exc:
            logger.warning("cannot tell the manager we are ready: %s", exc)

    def on_drain() -> None:
        try:
            notify(stopping=True, status="draining")
        except NotifyError as exc:
            logger.warning("cannot tell the manager we are draining: %s", exc)

    if interface == "wsgi":
        from .integrations.wsgi import serve_wsgi

        return serve_wsgi(_callable(app), sockets, options, on_ready=on_ready, on_drain=on_drain)
    from .integrations.uvicorn import serve_asgi

    asgi: ASGIApp = _callable(app)
    return serve_asgi(asgi, sockets, options, on_ready=on_ready, on_drain=on_drain)


def _callable(app: object) -> Callable[..., Any]:
    assert callable(app)  # detect_interface checked it
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Run one generation; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    options = ServeOptions(
        drain_timeout=args.drain_timeout,
        keep_alive=args.keep_alive,
        http=args.http,
        limit_concurrency=args.limit_concurrency,
        threads=args.threads,
        access_log=args.access_log,
        log_level=args.log_level,
        certfile=args.certfile,
        keyfile=args.keyfile,
        ws_grace=args.ws_grace,
    )
    if (args.certfile is None) != (args.keyfile is None):
        print("gapless serve: error: give --certfile and --keyfile together", file=sys.stderr)
        return EXIT_USAGE
    try:
        _check_readable(certfile=args.certfile, keyfile=args.keyfile)
        sockets = take_sockets(args.bind)
        app = load_app(args.app, factory=args.factory)
        interface = detect_interface(app) if args.interface == "auto" else args.interface
        report = serve(app, interface, sockets, options)
    except GaplessError as exc:
        print(f"gapless serve: error: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    if not report.clean:
        # Requests cut at the deadline may leave worker threads (WSGI) that would
        # hold the interpreter's exit; the drain is over, so leave now.
        logging.shutdown()
        os._exit(0)
    return 0


def _check_readable(**files: str | None) -> None:
    # Each generation reads them afresh; a missing one should say so in one line.
    for option, path in files.items():
        if path is not None and not os.access(path, os.R_OK):
            raise ServeError(f"cannot read --{option} {path!r}: check the path and permissions")


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)-8s gapless[%(process)d]: %(message)s"))
    root = logging.getLogger("gapless")
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


if __name__ == "__main__":
    sys.exit(main())
