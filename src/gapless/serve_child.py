"""``python -m gapless.serve_child``: the documented entry of one generation of
``gapless serve`` (see :mod:`gapless.serving.child`).

Kept at this path because command lines name it: ``gapless run -- python -m
gapless.serve_child app:app`` in users' units, and the command a running manager
of an earlier version re-runs at its next reload after ``gapless upgrade``.
"""

import sys

if __name__ == "__main__":
    from .serving.child import main

    sys.exit(main())
