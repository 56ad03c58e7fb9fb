"""``gapless.serve(app)``: the Python form of ``gapless serve``, in place of
``uvicorn.run(app)``.

Called in a process that was given no sockets, it becomes the manager of
``gapless serve`` (a stable PID that keeps the sockets; SIGHUP or ``gapless
reload`` starts a new generation) and runs the program again as each
generation: the same interpreter with the same command line
(``sys.orig_argv``), in the same directory. In that generation (it inherits the
sockets: ``LISTEN_FDS`` for its PID) the same call serves the application,
drains on SIGTERM and returns. So the application is found again by running
the program again, which imports its code afresh; for that:

* the call must be reached again the same way: put it under
  ``if __name__ == "__main__":`` in a script or ``python -m`` module;
* the manager runs the program too, up to this call, so importing it should
  not start work (open connections in the ASGI lifespan, not at import);
* ``app`` may be the object or an import string ``"module:attr"`` (then only the
  generations import it, and ``--workers`` import it in each worker).

Under ``gapless run`` or systemd socket activation the call is one generation
from the start, and whatever passed the sockets restarts it.

Example::

    import gapless
    from myapp import app

    if __name__ == "__main__":
        raise SystemExit(gapless.serve(app, bind=["127.0.0.1:8000"], workers=2))
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

from ..errors import GaplessError
from ..hooks import Hooks
from ..integrations.common import ServeOptions
from ..sockets.addresses import parse_bind
from ..systemd.listen_fds import consume_listen_fds
from .cli import DEFAULT_BIND, DRAIN_MARGIN, inherited
from .options import check_honoured

__all__ = ["serve"]

logger = logging.getLogger("gapless.serve")

EXIT_STARTUP = 3


def serve(
    app: object,
    bind: str | Sequence[str] = DEFAULT_BIND,
    *,
    interface: str = "auto",
    server: str = "uvicorn",
    workers: int = 1,
    options: ServeOptions | None = None,
    hooks: Hooks | None = None,
    apps: Mapping[str, object] | None = None,
    control: str | None = None,
    pid_file: str | None = None,
) -> int:
    """Serve ``app`` with reloads that lose no request; see the module docstring.

    Args:
        app: an ASGI, WSGI or aiohttp application, or ``"module:attr"`` naming one.
        bind: ``[NAME=]ADDRESS`` strings, as ``gapless serve --bind``.
        interface: ``auto`` (detected), ``asgi``, ``wsgi`` or ``aiohttp``.
        server: ``uvicorn`` or ``hypercorn`` (ASGI and WSGI), ``granian`` (ASGI).
        workers: processes sharing the sockets in each generation.
        options: drain timeout, keep-alive, TLS files, limits (:class:`ServeOptions`).
        hooks: ``before_upgrade``, ``on_ready``, ``before_shutdown``, ``after_shutdown``
            callables, run in each generation (see :mod:`gapless.serving.apps`).
        apps: further applications (or ``"module:attr"``) by bind name, each
            served by a process of its own, e.g. ``{"admin": admin_app}`` with
            ``bind=["web=:8000", "admin=127.0.0.1:8001"]``.
        control: the manager's control socket (default: as ``gapless run``).
        pid_file: where the manager writes its PID.

    Returns:
        The exit code, for ``raise SystemExit(...)``: 0 after a stop; in a
        generation, 3 when the application or a hook could not start.

    Raises:
        OptionIgnoredError: an option of ``options`` that ``server`` would ignore.
        GaplessError: the manager could not start (a bind, the control socket).
    """
    options = options or ServeOptions()
    binds = [bind] if isinstance(bind, str) else list(bind)
    # With interface "auto", each generation checks again once it loaded the application.
    check_honoured({**dataclasses.asdict(options), "server": server}, interface, server)
    if inherited():
        return _generation(app, interface, server, workers, options, hooks, apps or {})
    from ..run.config import ManagerConfig, ReadyMode
    from ..run.launch import start

    config = ManagerConfig(
        command=[sys.executable, *sys.orig_argv[1:]],
        binds=[parse_bind(text) for text in binds],
        control_path=control,
        pid_file=pid_file,
        ready=ReadyMode.parse("notify"),
        drain_timeout=options.drain_timeout + DRAIN_MARGIN,
        stop_signal=signal.SIGTERM,
    )
    return start(config)


def _generation(
    app: object,
    interface: str,
    server: str,
    workers: int,
    options: ServeOptions,
    hooks: Hooks | None,
    apps: Mapping[str, object],
) -> int:
    from .apps import load_app
    from .child import AppSpec, configure_logging, run_generation

    configure_logging(options.log_level)

    def loader(obj: object) -> Callable[[], object]:
        return lambda: load_app(obj) if isinstance(obj, str) else obj

    generation = AppSpec(
        loader(app),
        interface=interface,
        server=server,
        options=options,
        hooks=hooks,
        workers=workers,
        apps={name: loader(obj) for name, obj in apps.items()},
    )
    sockets = consume_listen_fds()
    try:
        return run_generation(generation, sockets)
    except GaplessError as exc:
        logger.error("cannot serve: %s", exc)
        return EXIT_STARTUP
