"""``gapless.serve(app)`` from Python: the manager when started alone, a
generation when re-run by it. ``python serve_api_app.py CONTROL BIND [WORKERS]``."""

from __future__ import annotations

import sys

from serve_app import app

import gapless

if __name__ == "__main__":
    control, bind, *rest = sys.argv[1:]
    workers = int(rest[0]) if rest else 1
    options = gapless.ServeOptions(access_log=False, drain_timeout=10)
    code = gapless.serve(app, bind=[bind], control=control, workers=workers, options=options)
    raise SystemExit(code)
