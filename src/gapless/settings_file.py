"""The TOML side of :mod:`gapless.settings`: reading a config file's table, and
writing the settings in effect as one (``--print-config``).

A config file has one table per subcommand, ``[run]`` and ``[serve]``::

    [serve]
    app = "myapp:app"
    bind = ["0.0.0.0:8000"]
    drain_timeout = "30s"

Python 3.11 reads it with :mod:`tomllib`; 3.10 with ``tomli`` when installed
(gapless itself depends on nothing).
"""

from __future__ import annotations

import difflib
import enum
import importlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import SettingsError

__all__ = ["DEFAULT_FILE", "TABLES", "check_keys", "load_table", "render", "toml_value"]

#: Read when neither ``--config`` nor ``$GAPLESS_CONFIG`` names a file, if it exists.
DEFAULT_FILE = "gapless.toml"
#: The tables a config file may have: the subcommands that read one.
TABLES = ("run", "serve")


def load_table(path: str, command: str) -> dict[str, Any]:
    """The ``[command]`` table of the config file at ``path`` (empty if it has none).

    Raises:
        SettingsError: the file cannot be read or parsed, or has a table other
            than :data:`TABLES`, or a ``[command]`` that is no table.
    """
    loads = _toml_reader()
    try:
        with open(path, "rb") as file:
            text = file.read().decode()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SettingsError(f"cannot read config file {path!r}: {reason}; check the path") from None
    try:
        data = loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError is one
        raise SettingsError(f"config file {path!r} is not valid TOML: {exc}") from None
    for name in data:
        if name not in TABLES:
            nearest = difflib.get_close_matches(name, TABLES, n=1)
            hint = f"did you mean [{nearest[0]}]?" if nearest else "use [run] or [serve]"
            raise SettingsError(f"unknown table or key {name!r} in {path}; {hint}")
    table = data.get(command, {})
    if not isinstance(table, dict):
        raise SettingsError(f"{command} in {path} is not a table: write [{command}] above its keys")
    return table


def check_keys(table: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    """Refuse a key of ``table`` not among ``keys``, naming the nearest one."""
    for key in table:
        if key not in keys:
            nearest = difflib.get_close_matches(key, keys, n=1)
            hint = f"did you mean {nearest[0]!r}?" if nearest else "see --print-config for the keys"
            raise SettingsError(f"unknown key {key!r} in {where}; {hint}")


def _toml_reader() -> Callable[[str], dict[str, Any]]:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib.loads
    try:  # 3.10: tomli is tomllib before it joined the standard library
        tomli = importlib.import_module("tomli")
    except ImportError:
        raise SettingsError("config files need Python 3.11+ or `pip install tomli`") from None
    loads: Callable[[str], dict[str, Any]] = tomli.loads
    return loads


def toml_value(value: Any) -> str:
    """``value`` as a TOML value its option's type reads back: a list, a bool, a
    number, else the string of it (an enum by its name: ``SIGTERM``)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, enum.Enum):
        return json.dumps(value.name)
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)  # true, 30, 30.0: TOML spells them alike
    # A JSON string is a TOML basic string: the same escapes, \uXXXX included.
    return json.dumps(str(value))


def render(command: str, rows: Mapping[str, tuple[Any, str]], path: str | None) -> str:
    """The settings of ``gapless COMMAND`` as a config file: each ``key = value``
    with its source after ``#``; one without a value (unset) commented out.

    Args:
        rows: (value, source) by key, in the order to print.
        path: the config file read, if any.
    """
    lines = [
        f"# gapless {command}: the settings in effect and where each came from",
        "# (command line > environment > config file > default).",
        f"# config file: {path or 'none'}",
        f"[{command}]",
    ]
    for key, (value, source) in rows.items():
        if value is None:
            lines.append(f"# {key} is unset  # {source}")
        else:
            lines.append(f"{key} = {toml_value(value)}  # {source}")
    return "\n".join(lines)
