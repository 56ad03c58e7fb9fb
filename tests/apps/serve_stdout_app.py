"""serve_app's ASGI app, from a module that says on stdout which pid imported it."""

import os

from serve_app import app

__all__ = ["app"]

print(f"imported on stdout in pid {os.getpid()}", flush=True)
