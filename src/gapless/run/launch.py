"""Start a manager for a :class:`~gapless.run.config.ManagerConfig`: the one step
``gapless run``, ``gapless serve`` and ``gapless.serve()`` share.

With a handoff socket (``--handoff``) the calling process becomes the front a
supervisor watches and the manager runs in a forked child
(:mod:`gapless.run.extras.front`); otherwise the calling process is the manager.

Example::

    sys.exit(start(ManagerConfig(command=["python", "server.py"], binds=binds)))
"""

from __future__ import annotations

from .config import ManagerConfig

__all__ = ["start"]


def start(config: ManagerConfig) -> int:
    """Run the manager of ``config`` until it stops; returns its exit code.

    Raises:
        GaplessError: the manager could not start (a bind, the control socket).
    """
    if config.handoff_path is not None:
        from .extras.front import run_front

        return run_front(config)
    from .manager import Manager

    return Manager(config).run()
