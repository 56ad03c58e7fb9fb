"""The manager's control commands that wait: ``reload`` and ``stop``.

A ``reload`` client is answered once the start it asked for is over (ready or
failed); a ``stop`` client once the manager has closed everything. Meanwhile
each one gets the manager's events as progress lines, and counts as waiting
(never idle, see gapless.run.clients). ``status`` and ``upgrade`` answer on
their own (gapless.run.manager, gapless.run.inplace).

Example::

    commands = Commands(driver, log, upstream)
    commands.register(table)
    commands.request_reload(None, "SIGHUP")      # a reload nobody waits for
"""

from __future__ import annotations

from .control import CommandTable, ControlConnection, Message, error, progress, reply
from .driver import Driver
from .eventlog import EventLog
from .generations import ReloadResult
from .upstream import Upstream

__all__ = ["Commands"]


class Commands:
    """The reload and stop commands and the clients waiting on them.

    Args:
        driver: the generations, which get the requests.
        log: the event log waiting clients are subscribed to.
        upstream: what systemd is told (RELOADING=1).
    """

    def __init__(self, driver: Driver, log: EventLog, upstream: Upstream) -> None:
        self._driver = driver
        self._log = log
        self._upstream = upstream
        self._requests = 0
        self._reload_waiters: dict[int, ControlConnection] = {}
        self.stop_waiters: list[ControlConnection] = []

    def register(self, table: CommandTable) -> None:
        table.register(
            "reload",
            "start a new generation; answer once it is ready or failed; "
            '"cold": true starts it cold (not from the fork server)',
            self._reload,
            {"cold": _boolean},
        )
        table.register("stop", "drain every generation, then exit; answer when stopped", self._stop)

    def request_reload(
        self, connection: ControlConnection | None, by: str, cold: bool = False
    ) -> None:
        """A reload asked for by ``by``; ``connection`` (if any) waits for its end."""
        self._log.event("reload", f"{'cold ' if cold else ''}reload requested by {by}")
        if self._driver.running:
            self._upstream.reload_requested()
        if self._driver.reload_under_way and connection is not None:
            connection.send(progress("a reload is under way; a new one follows it"))
        request = None
        if connection is not None:
            self._requests += 1
            request = self._requests
            self._reload_waiters[request] = connection
            connection.waiting += 1
            self._log.subscribe(connection)
        self._driver.request_reload(request, cold)

    def answer(self, result: ReloadResult, stderr: list[str]) -> None:
        """Answer the clients that waited for this start."""
        for request in result.requests:
            connection = self._reload_waiters.pop(request, None)
            if connection is None:
                continue
            connection.waiting -= 1
            self._log.unsubscribe(connection)
            if result.ok:
                connection.send(reply(True, generation=result.generation, message=result.reason))
            else:
                connection.send(error(result.reason, generation=result.generation, stderr=stderr))

    def answer_stopped(self) -> None:
        """The manager closed everything: tell the stop clients."""
        for connection in self.stop_waiters:
            connection.send(reply(True, message="stopped"))
            connection.close()

    def _reload(self, connection: ControlConnection, request: Message) -> None:
        cold = request.get("cold") is True
        self.request_reload(connection, f"gapless reload (pid {connection.pid})", cold)

    def _stop(self, connection: ControlConnection, request: Message) -> None:
        self.stop_waiters.append(connection)
        connection.waiting += 1
        self._log.subscribe(connection)
        if self._driver.running:  # a second stop only waits too
            self._driver.request_stop(f"stop requested by gapless stop (pid {connection.pid})")


def _boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else f"cold must be true or false, not {value!r}"
