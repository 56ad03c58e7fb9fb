"""Finding a web application, its interface and its hooks, and serving it.

The hooks of a generation are plain functions in a module named by
``--hooks MODULE`` (imported afresh by each generation, as the application is),
or a :class:`~gapless.hooks.Hooks` given to :func:`gapless.serve`. Each is
optional and takes no argument:

* ``before_upgrade()``: before the generation imports the application, also the
  first one. Raising vetoes the start: the generation exits with code 3, the
  reload fails, and the generation serving now carries on (nothing changes for
  clients). For checks and migrations that must pass before new code serves.
* ``on_ready()``: once ``READY=1`` was sent (with workers: all of them are ready).
* ``before_shutdown()``: when the drain begins (the stop signal arrived).
* ``after_shutdown()``: once the drain is over, before the process exits.

An exception in any hook but ``before_upgrade`` is logged and changes nothing.
Hooks run in the serving process (the event loop waits for them): keep them short.

Example::

    app = load_app("myapp:app")
    serve(app, detect_interface(app), "uvicorn", sockets, ServeOptions(), Hooks())
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import os
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import NotifyError, ServeError
from ..hooks import Hooks
from ..integrations.common import DrainReport, ServeOptions
from ..sockets.listeners import listener_address
from ..systemd.notify import notify, ready
from .options import STACKS, check_honoured, stack_of

__all__ = ["SERVE_HOOKS", "detect_interface", "load_app", "load_hooks", "serve"]

logger = logging.getLogger("gapless.serve")

SERVE_HOOKS = ("before_upgrade", "on_ready", "before_shutdown", "after_shutdown")


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
    obj: Any = _import(module_name, spec)
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ServeError(
                f"no attribute {part!r} in {spec!r}: check the name after ':'"
            ) from None
    return obj() if factory else obj


def load_hooks(module_name: str) -> Hooks:
    """The hook functions of a module (see the module docstring).

    Raises:
        ServeError: the module cannot be imported or defines none of the hooks.
    """
    module = _import(module_name, f"--hooks {module_name}")
    hooks = Hooks()
    for name in SERVE_HOOKS:
        function = getattr(module, name, None)
        if callable(function):
            getattr(hooks, name).append(function)
    if not any(getattr(hooks, name) for name in SERVE_HOOKS):
        raise ServeError(
            f"no hook in module {module_name!r}: define one of {', '.join(SERVE_HOOKS)}"
        )
    return hooks


def _import(module_name: str, what: str) -> object:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not _names_the_module(exc.name, module_name):  # a missing import inside the app
            logger.error("importing %s failed:\n%s", module_name, traceback.format_exc())
        raise ServeError(f"cannot import {module_name!r} for {what!r}: {exc}") from None
    except Exception as exc:
        logger.error("importing %s failed:\n%s", module_name, traceback.format_exc())
        raise ServeError(f"cannot import {module_name!r} for {what!r}: {exc!r}") from None


def _names_the_module(missing: str | None, module_name: str) -> bool:
    return missing is not None and (module_name + ".").startswith(missing + ".")


def detect_interface(app: object) -> str:
    """``aiohttp`` for an ``aiohttp.web.Application``; ``asgi`` if ``app`` (or its
    ``__call__``) is a coroutine function; else ``wsgi``.

    Raises:
        ServeError: ``app`` is not callable.
    """
    if any(
        cls.__name__ == "Application" and cls.__module__.startswith("aiohttp.")
        for cls in type(app).__mro__
    ):
        return "aiohttp"
    if not callable(app):
        raise ServeError(f"the application {app!r} is not callable: point MODULE:APP at it")
    call = app if inspect.isfunction(app) else getattr(app, "__call__", None)  # noqa: B004
    return "asgi" if inspect.iscoroutinefunction(call) else "wsgi"


def serve(
    app: object,
    interface: str,
    server: str,
    sockets: Sequence[socket.socket],
    options: ServeOptions,
    hooks: Hooks,
) -> DrainReport:
    """Serve ``app`` on ``sockets``, send ``READY=1`` when served, drain on SIGTERM.

    Args:
        app: the application.
        interface: ``asgi``, ``wsgi`` or ``aiohttp``.
        server: ``uvicorn`` or ``hypercorn`` (ASGI and WSGI), ``granian`` (ASGI).
        sockets: the listening sockets.
        options: the serving options.
        hooks: ``on_ready`` and ``before_shutdown`` are run here.

    Returns:
        How the drain ended.

    Raises:
        ServeError: the interface or a server package is missing.
        OptionIgnoredError: an option is set that this server would ignore.
    """
    check_honoured({**dataclasses.asdict(options), "server": server}, interface, server)
    names = ", ".join(str(listener_address(sock)) for sock in sockets)

    def on_ready() -> None:
        stack = STACKS[stack_of(interface, server)]
        logger.info("serving %s on %s with %s, pid %d", interface, names, stack, os.getpid())
        try:
            ready(status=f"serving on {names}")
        except NotifyError as exc:
            logger.warning("cannot tell the manager we are ready: %s", exc)
        hooks.run("on_ready")

    def on_drain() -> None:
        try:
            notify(stopping=True, status="draining")
        except NotifyError as exc:
            logger.warning("cannot tell the manager we are draining: %s", exc)
        hooks.run("before_shutdown")

    if interface == "aiohttp":
        from ..integrations.aiohttp import serve_aiohttp

        return serve_aiohttp(app, sockets, options, on_ready=on_ready, on_drain=on_drain)
    if interface not in ("asgi", "wsgi"):
        raise ServeError(f"unknown interface {interface!r}: choose asgi, wsgi or aiohttp")
    asgi: Any = _callable(app)
    if interface == "wsgi":
        from ..integrations.wsgi import wsgi_to_asgi

        asgi = wsgi_to_asgi(asgi, options.threads)
    if server == "granian":
        if interface == "wsgi":
            raise ServeError("WSGI on granian is not supported: use --server uvicorn or hypercorn")
        from ..integrations.granian import serve_granian

        return serve_granian(asgi, sockets, options, on_ready=on_ready, on_drain=on_drain)
    if server == "hypercorn":
        from ..integrations.hypercorn import serve_hypercorn

        return serve_hypercorn(asgi, sockets, options, on_ready=on_ready, on_drain=on_drain)
    if server != "uvicorn":
        raise ServeError(f"unknown server {server!r}: choose uvicorn, hypercorn or granian")
    from ..integrations.uvicorn import serve_asgi

    return serve_asgi(asgi, sockets, options, on_ready=on_ready, on_drain=on_drain)


def _callable(app: object) -> Callable[..., Any]:
    if not callable(app):
        raise ServeError(f"the application {app!r} is not callable: point MODULE:APP at it")
    return app
