"""Settings of ``gapless run`` and ``gapless serve`` from the command line, the
environment and a TOML file, in that order of precedence, then the defaults.

Nothing here names an option: the settings are read off the subcommand's
argparse parser, so an option added to ``run`` or ``serve`` later has its
``GAPLESS_<OPTION>`` variable and its config key with no more work. The key of
an option is its flag without the dashes (``--drain-timeout``: ``drain_timeout``,
``GAPLESS_DRAIN_TIMEOUT``); a positional is its dest, except ``argv`` which is
``command``; a key taken twice goes to the positional, the option keeping its dest.

Values are text (a variable) or TOML values (a file), put through the option's
own argparse type and choices, so they are checked exactly as on the command
line; a bad one is a :class:`~gapless.errors.SettingsError` naming where it was.

Example::

    sources = resolve(Layers(parser=serve_parser, argv=argv[1:], environ=os.environ), args)
    sources["drain_timeout"]     # 'env GAPLESS_DRAIN_TIMEOUT'
"""

from __future__ import annotations

import argparse
import difflib
import os
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import SettingsError
from .settings_file import DEFAULT_FILE, check_keys, load_table, toml_value

__all__ = [
    "CONFIG_VAR",
    "ENV_PREFIX",
    "Layers",
    "Platform",
    "Setting",
    "add_config_options",
    "resolve",
    "settings_of",
]

ENV_PREFIX = "GAPLESS_"
CONFIG_VAR = "GAPLESS_CONFIG"
#: The dests of the options that choose the settings, not settings themselves.
_OWN = ("config", "print_config")
_KEYS = {"argv": "command"}  # ``gapless run -- COMMAND``: its positional's dest says less
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and ``--print-config`` to a subcommand's ``parser``."""
    parser.add_argument(
        "--config", metavar="PATH",
        help=f"read settings from this TOML file (default: ${CONFIG_VAR}, else "
        f"./{DEFAULT_FILE} if it exists); precedence: command line > environment "
        f"({ENV_PREFIX}<OPTION>) > file > default",
    )  # fmt: skip
    parser.add_argument(
        "--print-config", action="store_true",
        help="print the settings in effect and where each came from, as TOML, and exit",
    )  # fmt: skip


@dataclass(frozen=True)
class Setting:
    """One option or positional of a subcommand, as a setting."""

    key: str
    action: argparse.Action

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.key.upper()

    @property
    def flag(self) -> bool:
        """An option without a value (``store_true``...): on sets ``action.const``."""
        return self.action.nargs == 0

    @property
    def many(self) -> bool:
        """A value that is a list: a repeatable option, or ``COMMAND [ARG]...``."""
        nargs = self.action.nargs
        return isinstance(self.action, argparse._AppendAction) or nargs in ("*", "+", "...")

    @property
    def optional(self) -> bool:
        """An option whose value may be left out (``--handoff`` or ``--handoff=PATH``)."""
        return self.action.nargs == "?" and bool(self.action.option_strings)


def settings_of(parser: argparse.ArgumentParser) -> list[Setting]:
    """Every setting of ``parser`` (a subcommand's), in its ``--help`` order."""
    skipped = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
    actions = [a for a in parser._actions if not isinstance(a, skipped) and a.dest not in _OWN]
    taken = {_KEYS.get(a.dest, a.dest) for a in actions if not a.option_strings}
    found = []
    for action in actions:
        if not action.option_strings:
            key = _KEYS.get(action.dest, action.dest)
        else:
            key = action.option_strings[-1].lstrip("-").replace("-", "_")
            key = action.dest if key in taken else key
        found.append(Setting(key, action))
    return found


@dataclass(frozen=True)
class Platform:
    """A variable a platform sets for the app, e.g. Heroku's ``PORT``, and the
    setting it stands for (as text), below ``GAPLESS_<OPTION>``; ``above_file``:
    also above the config file."""

    variable: str
    key: str
    template: str = "{}"
    above_file: bool = True


@dataclass(frozen=True)
class Layers:
    """Where settings come from, besides the parsed command line.

    Attributes:
        parser: the subcommand's parser (``gapless run``'s, ``gapless serve``'s).
        argv: the arguments given to it (after the subcommand's name).
        environ: the environment.
        platform: the platform variables this subcommand honours.
        neighbours: keys of the other subcommands (a variable for them is no typo).
    """

    parser: argparse.ArgumentParser
    argv: Sequence[str]
    environ: Mapping[str, str]
    platform: Sequence[Platform] = ()
    neighbours: frozenset[str] = field(default_factory=frozenset)

    @property
    def command(self) -> str:
        return self.parser.prog.split()[-1]


def resolve(layers: Layers, args: argparse.Namespace) -> dict[str, str]:
    """Set on ``args`` each setting not given on the command line from the
    environment or the config file; return where each came from, by key
    (``cli``, ``env GAPLESS_X``, ``file PATH``, ``default``).

    Raises:
        SettingsError: a bad value, an unknown key or variable, an unreadable file.
    """
    path = config_path(args, layers.environ)
    table = load_table(path, layers.command) if path else {}
    settings = settings_of(layers.parser)
    check_keys(table, [s.key for s in settings], f"[{layers.command}] of {path}")
    _check_variables(layers, {s.key for s in settings})
    given = _given(layers.parser, layers.argv)
    sources = {}
    for setting in settings:
        dest = setting.action.dest
        if dest in given:
            sources[setting.key] = "cli"
            continue
        found = _lookup(setting, layers, table, path)
        if found is not None:
            sources[setting.key], value = found
            setattr(args, dest, value)
        else:
            sources[setting.key] = "default"
    return sources


def config_path(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """The config file to read: ``--config``, ``$GAPLESS_CONFIG``, else ./gapless.toml
    if there is one; None for none."""
    if args.config is not None:
        return str(args.config)
    if environ.get(CONFIG_VAR):
        return environ[CONFIG_VAR]
    return DEFAULT_FILE if os.path.isfile(DEFAULT_FILE) else None


def _lookup(
    setting: Setting, layers: Layers, table: Mapping[str, Any], path: str | None
) -> tuple[str, Any] | None:
    """(source, value) of the first layer below the command line that sets ``setting``."""
    text = layers.environ.get(setting.variable)
    if text:  # an empty variable is unset, as a shell's ${X:-} would have it
        return f"env {setting.variable}", from_text(setting, text, setting.variable)
    found = _platform(setting, layers, above_file=True)
    if found is None and setting.key in table:
        where = f"{setting.key} in [{layers.command}] of {path}"
        return f"file {path}", from_toml(setting, table[setting.key], where)
    return found or _platform(setting, layers, above_file=False)


def _platform(setting: Setting, layers: Layers, *, above_file: bool) -> tuple[str, Any] | None:
    for each in layers.platform:
        given = layers.environ.get(each.variable)
        if each.key == setting.key and each.above_file == above_file and given:
            text = each.template.format(given)
            where = f"{each.variable} (for {setting.key})"
            return f"env {each.variable}", from_text(setting, text, where)
    return None


def from_text(setting: Setting, text: str, where: str) -> Any:
    """The value of ``setting`` given as the text of a variable."""
    action = setting.action
    word = text.strip().lower()
    if setting.flag or (setting.optional and word in _TRUE + _FALSE):
        if word not in _TRUE + _FALSE:
            raise SettingsError(
                f"{where}: invalid value {text!r}: give 1, 0, true, false, yes or no"
            )
        return action.const if word in _TRUE else action.default
    if setting.many:
        if action.nargs == argparse.REMAINDER:
            return shlex.split(text)
        # Commas only: an item may hold spaces (a hook's command, a unix path).
        items = (item.strip() for item in text.split(","))
        return [_convert(action, item, where) for item in items if item]
    return _convert(action, text, where)


def from_toml(setting: Setting, value: Any, where: str) -> Any:
    """The value of ``setting`` given as a TOML value."""
    action = setting.action
    if setting.flag or (setting.optional and isinstance(value, bool)):
        if not isinstance(value, bool):
            raise SettingsError(f"{where}: give true or false, not {toml_value(value)}")
        return action.const if value else action.default
    if setting.many:
        if isinstance(value, str):
            value = shlex.split(value) if action.nargs == argparse.REMAINDER else [value]
        if not isinstance(value, list):
            raise SettingsError(f'{where}: give a list, e.g. ["a", "b"], not {toml_value(value)}')
        if action.nargs == argparse.REMAINDER:
            return [str(item) for item in value]
        return [_convert(action, _scalar(item, where), where) for item in value]
    return _convert(action, _scalar(value, where), where)


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SettingsError(f"{where}: give a string or a number, not {toml_value(value)}")
    return str(value)


def _convert(action: argparse.Action, text: str, where: str) -> Any:
    """``text`` through the option's argparse type and choices, as the command line would."""
    try:
        value = action.type(text) if callable(action.type) else text
    except argparse.ArgumentTypeError as exc:
        raise SettingsError(f"{where}: {exc}") from None
    except (TypeError, ValueError):
        raise SettingsError(f"{where}: invalid value {text!r}") from None
    if action.choices is not None and value not in action.choices:
        allowed = ", ".join(str(choice) for choice in action.choices)
        raise SettingsError(f"{where}: invalid value {text!r}: give one of {allowed}")
    return value


def _check_variables(layers: Layers, keys: set[str]) -> None:
    """Refuse a ``GAPLESS_`` variable one typo away from a setting's: it would be
    ignored silently. Others (gapless's own, another subcommand's) pass."""
    known = {key.upper() for key in keys | layers.neighbours}
    for variable in _variables(layers.environ):
        name = variable.removeprefix(ENV_PREFIX)
        if name in known or name == "CONFIG":
            continue
        nearest = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.85)
        if nearest:
            raise SettingsError(
                f"unknown variable {variable}; did you mean {ENV_PREFIX}{nearest[0]}?"
            )


def _variables(environ: Mapping[str, str]) -> Iterator[str]:
    return (name for name in environ if name.startswith(ENV_PREFIX))


def _given(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The dests set on the command line ``argv`` of ``parser``: parsed again with
    every default suppressed, so only what was given lands in the namespace."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        parsed, _ = parser.parse_known_args(list(argv))
    finally:
        for action, default in saved:
            action.default = default
    return {dest for dest, value in vars(parsed).items() if value not in ([], None)}


def shown(
    parser: argparse.ArgumentParser, args: argparse.Namespace, sources: Mapping[str, str]
) -> dict[str, tuple[Any, str]]:
    """(value, source) by key, as ``--print-config`` shows them: a flag as true or
    false, an optional value given without one as true."""
    rows = {}
    for setting in settings_of(parser):
        value = getattr(args, setting.action.dest, None)
        if setting.flag or (setting.optional and value == setting.action.const):
            value = value == setting.action.const
        rows[setting.key] = (value, sources[setting.key])
    return rows


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parsers of ``parser``'s subcommands, by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
