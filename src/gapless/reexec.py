"""``python -m gapless.reexec``: the stable entry of an upgrade in place.

A running manager of any gapless version upgrades itself by exec'ing
``python -m gapless.reexec FD`` with the *installed* gapless (see
:mod:`gapless.run.reexec`); this module path is therefore part of the wire
format between versions and stays here whatever the layout of the package.
"""

import sys

if __name__ == "__main__":
    # Checked before importing the manager, so a target that cannot resume says so fast.
    from .run.resume import main

    sys.exit(main())
