"""The package's public surface."""

import importlib
import subprocess
import sys

import gapless


def test_every_public_name_resolves() -> None:
    for name in gapless.__all__:
        assert getattr(gapless, name) is not None, name


def test_notify_is_the_function_even_after_its_module_is_imported() -> None:
    module = importlib.import_module("gapless.systemd.notify")
    assert callable(gapless.notify) and gapless.notify is module.notify


def test_importing_gapless_leaves_asyncio_and_the_upgrader_unloaded() -> None:
    # Every generation imports gapless: what it does not use must cost nothing.
    code = (
        "import gapless, sys; "
        "print('asyncio' in sys.modules, 'gapless.library.upgrader' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "False"], result.stderr
