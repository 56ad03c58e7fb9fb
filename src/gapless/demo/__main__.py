"""``python -m gapless.demo``: the demo server."""

import sys

from .server import main

sys.exit(main())
