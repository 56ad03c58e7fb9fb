"""The entry a manager execs into when it upgrades in place: read the state the
previous process left in a memfd and carry on as a :class:`~gapless.run.manager.Manager`.

It is started as ``python -m gapless.reexec FD`` (see :mod:`gapless.reexec`),
a module path that every gapless version keeps, so that a manager of any
earlier version can exec into this one.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..errors import GaplessError
from .manager import Manager
from .reexec import STATE_VERSION, read_state

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``FD``: resume the manager whose state is in ``FD``; ``--check``: print the
    state version this gapless resumes from."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--check"]:
        print(STATE_VERSION)
        return 0
    try:
        state = read_state(int(args[0]))
        return Manager.resume(state).run()
    except GaplessError as exc:
        print(f"gapless: error: {exc}", file=sys.stderr)
        return 1
