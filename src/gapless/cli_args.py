"""What every ``gapless`` command line shares, said once: the exit code and the
one-line message of a misuse, the argparse types, and :class:`Option`, the
declaration of an option from which a parser, a command line and a doc table
are all made.

It sits below ``gapless.cli`` and ``gapless.serving`` (it imports neither), so
both take their pieces from here.

Example::

    parser = Parser(prog="gapless serve")
    KEEP = Option("--keep-alive", "idle keep-alive (default 5)", default=5.0, type=seconds)
    KEEP.add_to(parser)
    KEEP.argv(10.0)        # ['--keep-alive', '10.0']
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from .errors import GaplessError
from .sockets.addresses import Bind, parse_bind

__all__ = [
    "EXIT_USAGE",
    "HOOK_GROUP",
    "HOOK_OPTIONS",
    "RESTART_GROUP",
    "RESTART_OPTIONS",
    "Option",
    "Parser",
    "bind",
    "delay",
    "duration",
    "hook_command",
    "nonempty_path",
    "positive_seconds",
    "usage_error",
    "whole_number",
]

#: The exit code of a misuse of the command line.
EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: ``PROG: error: ...; see PROG --help``,
    said by the subcommand's parser when there is one, which also suggests the
    nearest option for one it does not know."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see {self.prog} --help\n")

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self._chosen(parsed).unrecognized(extras)
        return parsed

    def unrecognized(self, extras: Sequence[str]) -> NoReturn:
        """Exit naming the first argument not understood, and the option nearest to it."""
        word = next((each for each in extras if each.startswith("-")), extras[0])
        known = [flag for action in self._actions for flag in action.option_strings]
        option = word.partition("=")[0] if word.startswith("-") else ""
        nearest = difflib.get_close_matches(option, known, n=1) if option else []
        if nearest:
            self.exit(
                EXIT_USAGE,
                f"{self.prog}: error: unrecognized argument {word}; did you mean {nearest[0]}?\n",
            )
        self.error(f"unrecognized argument {word}")

    def _chosen(self, parsed: argparse.Namespace) -> Parser:
        """The parser of the subcommand given (the deepest), else this one."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                sub = action.choices.get(str(getattr(parsed, action.dest, "")))
                if isinstance(sub, Parser):
                    return sub._chosen(parsed)
        return self


def usage_error(prog: str, message: str) -> NoReturn:
    """Exit with :data:`EXIT_USAGE` and the one-line message of a misuse."""
    print(f"{prog}: error: {message}; see {prog} --help", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def bind(text: str) -> Bind:
    """argparse type: ``[NAME=]ADDRESS``, parsed once into a :class:`Bind`."""
    try:
        return parse_bind(text)
    except GaplessError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def whole_number(minimum: int) -> Callable[[str], int]:
    """argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
        return value

    return parse


#: A duration: a number of seconds, or one with a unit (``500ms``, ``30s``, ``2m``, ``1h``).
_DURATION = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<unit>ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
#: Longer than any wait gapless does (and than ``time.monotonic`` arithmetic minds).
MAX_SECONDS = 1e6


def duration(text: str, *, minimum: float = 0.0, above: bool = False) -> float:
    """Seconds of ``text``: ``30``, ``0.5``, ``30s``, ``500ms``, ``2m`` or ``1h``.

    Raises:
        argparse.ArgumentTypeError: not a duration from ``minimum`` (``above``:
            excluded) below :data:`MAX_SECONDS`, with the forms allowed.
    """
    match = _DURATION.fullmatch(text.strip())
    try:
        value = float(match["number"]) * _UNITS[match["unit"]] if match else float(text)
    except ValueError:
        value = math.nan
    low_ok = value > minimum if above else value >= minimum
    if not (low_ok and value < MAX_SECONDS):  # also refuses nan and inf
        bound = f"above {minimum:g}" if above else f"from {minimum:g}"
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: give seconds {bound} or a number with ms, s, m or h, "
            "e.g. 500ms, 30s, 2m"
        )
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a duration above 0 (see :func:`duration`)."""
    return duration(text, above=True)


def delay(text: str) -> float:
    """argparse type: a duration from 0 (see :func:`duration`)."""
    return duration(text)


def nonempty_path(text: str) -> str:
    """argparse type: a path, which may not be empty."""
    if not text:
        raise argparse.ArgumentTypeError("empty path; give the path of a file")
    return text


#: Option kinds: a value, a repeatable value, a flag that sets True, one that sets False,
#: a value that may be left out (``--handoff`` or ``--handoff=PATH``).
KINDS = ("value", "append", "true", "false", "optional")


@dataclass(frozen=True)
class Option:
    """One option of a command: everything its parser, its command line and its
    documentation need.

    Attributes:
        flag: ``--keep-alive``.
        help: one line for ``--help`` and the doc table.
        default: the value when the option is not given.
        type: the argparse type (a function of the text).
        metavar: its argument in ``--help``.
        choices: the values allowed, if a closed set.
        kind: one of :data:`KINDS`.
        dest: the attribute name, when not the flag's.
        const: the value of an ``optional`` option given without one.
        servers: the servers honouring it (see :mod:`gapless.serving.options`);
            empty for every one.
        scope: who reads it; free for the commands to define (``child``...).
    """

    flag: str
    help: str
    default: Any = None
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    kind: str = "value"
    dest: str | None = None
    const: Any = None
    servers: Collection[str] = ()
    scope: str = ""

    @property
    def name(self) -> str:
        """The attribute of the parsed arguments, e.g. ``keep_alive``."""
        return self.dest or self.flag.lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser | Any) -> None:
        """Add it to ``parser`` (an ``ArgumentParser`` or an argument group)."""
        extra: dict[str, Any] = {"dest": self.name, "help": self.help}
        if self.kind in ("true", "false"):
            action = "store_true" if self.kind == "true" else "store_false"
            parser.add_argument(self.flag, action=action, **extra)
            return
        if self.kind == "append":
            extra.update(action="append", default=[])
        else:
            extra["default"] = self.default
        if self.kind == "optional":
            extra.update(nargs="?", const=self.const)
        if self.choices is not None:
            extra["choices"] = self.choices
        if self.metavar is not None:
            extra["metavar"] = self.metavar
        if self.type is not None:
            extra["type"] = self.type
        parser.add_argument(self.flag, **extra)

    def argv(self, value: Any) -> list[str]:
        """The arguments that give it ``value``; none for its default."""
        if self.kind == "append":
            return [part for item in value for part in (self.flag, str(item))]
        if value == self.default:
            return []
        if self.kind in ("true", "false"):
            return [self.flag]
        if self.kind == "optional" and value == self.const:
            return [self.flag]
        return [self.flag, str(value)]

    @property
    def shown_default(self) -> str:
        """The default as the doc table shows it."""
        if self.kind in ("true", "false"):
            return "off"  # the flag is not given
        if self.kind == "append" or self.default is None:
            return "none"
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)


RESTART_GROUP = "restarts by a supervisor, systemd or Kubernetes (docs/deploy.md)"
#: The options of ``gapless run`` and ``gapless serve`` for restarts of the manager.
RESTART_OPTIONS = (
    Option(
        "--handoff",
        "on TERM, exit at once but keep serving, detached, until the next instance "
        "(started with the same --handoff) takes the sockets over PATH (default: beside "
        "the control socket); gapless stop still stops",
        kind="optional",
        const="",
        metavar="PATH",
    ),
    Option(
        "--handoff-timeout",
        "drain and exit if no instance took over by then (default 10)",
        default=10.0,
        type=positive_seconds,
        metavar="SECONDS",
    ),
    Option(
        "--shutdown-delay",
        "after the first TERM or INT keep accepting this long, the health endpoint "
        "saying draining, then drain (default 0)",
        default=0.0,
        type=delay,
        metavar="SECONDS",
    ),
    Option(
        "--health-bind",
        "answer HTTP here: /ready (and /) 200 serving, 503 starting or draining; "
        "/live 200; /metrics in Prometheus text",
        type=bind,
        metavar="ADDRESS",
    ),
)


def hook_command(text: str) -> str:
    """argparse type: a shell command for a hook, which may not be empty."""
    if not text.strip() or "\0" in text:
        raise argparse.ArgumentTypeError(
            f"invalid hook command {text!r}: give a shell command, e.g. 'nginx -t'"
        )
    return text


HOOK_GROUP = "hooks: shell commands run by the manager (docs/run.md#hooks)"
#: The options of ``gapless run`` and ``gapless serve`` for hooks (gapless.run.hooks).
HOOK_OPTIONS = (
    Option(
        "--before-reload",
        "run CMD (/bin/sh -c) before each requested reload; if it fails, so does the "
        "reload, and the serving generation serves on",
        type=hook_command,
        metavar="CMD",
    ),
    Option(
        "--on-ready",
        "run CMD when a generation is ready (not waited for)",
        type=hook_command,
        metavar="CMD",
    ),
    Option(
        "--on-reload-failed",
        "run CMD when a reload fails (not waited for)",
        type=hook_command,
        metavar="CMD",
    ),
    Option(
        "--hook-timeout",
        "kill a hook's process group after this (default 30)",
        default=30.0,
        type=positive_seconds,
        metavar="SECONDS",
    ),
)
