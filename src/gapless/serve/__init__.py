"""``gapless serve``: Python web apps served with a drain that loses nothing."""

import sys
import types
from typing import Any


class _Package(types.ModuleType):
    """``gapless.serve`` names both this package and the function
    :func:`gapless.serve.api.serve`: once a module of the package is imported,
    Python sets ``gapless.serve`` to the package, so the package serves when called."""

    def __call__(self, *args: Any, **kwargs: Any) -> int:
        from .api import serve

        return serve(*args, **kwargs)


sys.modules[__name__].__class__ = _Package
