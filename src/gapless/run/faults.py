"""Test-only fault injection: how the tests prove invariant 7 without mocks.

Only when the manager starts with ``GAPLESS_TEST_FAULTS=1`` in its environment
does it register one more control command, ``fault``, with a ``"where"``:

* ``"handler"``: the command itself raises; the manager must answer that client
  with an error, drop it, and serve on.
* ``"loop"``: the manager's loop raises at the end of its current turn, outside
  every handler; the manager must re-execute itself in place, keeping its pid,
  its sockets and its generations.
* ``"notify"``: the handling of the next notify datagram raises; the manager
  must drop that datagram and serve on.

Never set it in production: any process of the manager's user could then make
it raise (harmlessly, by the rule above, but a re-exec costs a fraction of a
second of control-socket latency).

Example::

    GAPLESS_TEST_FAULTS=1 gapless run -- ...
    # then, on the control socket: {"v": 1, "cmd": "fault", "where": "loop"}
"""

from __future__ import annotations

from collections.abc import Mapping

from .control import CommandTable, ControlConnection, Message, error, reply

__all__ = ["ENV", "Faults", "InjectedFault"]

ENV = "GAPLESS_TEST_FAULTS"
WHERES = ("handler", "loop", "notify")


class InjectedFault(Exception):
    """Raised on purpose by the test-only ``fault`` command; never in production."""


class Faults:
    """The armed faults; inert unless ``environ`` has ``GAPLESS_TEST_FAULTS=1``."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.enabled = environ.get(ENV) == "1"
        self._armed: set[str] = set()

    def register(self, table: CommandTable) -> None:
        if self.enabled:
            help = f'(test only, {ENV}=1) raise in the "where": {", ".join(WHERES)}'
            table.register("fault", help, self._command)

    def _command(self, connection: ControlConnection, request: Message) -> None:
        where = request.get("where")
        if where not in WHERES:
            connection.send(error(f'"where" must be one of {", ".join(WHERES)}, not {where!r}'))
            return
        if where == "handler":
            raise InjectedFault("raised on purpose in the fault command")
        self._armed.add(where)
        connection.send(reply(True, message=f"armed: the {where} raises next"))

    def check(self, where: str) -> None:
        """Raise :class:`InjectedFault` if a fault is armed at ``where`` (once)."""
        if where in self._armed:
            self._armed.discard(where)
            raise InjectedFault(f"raised on purpose in the {where}")
