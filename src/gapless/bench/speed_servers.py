"""The servers of ``gapless bench --speed``: each plain server beside ``gapless serve``
running the same app with the same server inside, and the app's own import time.

A plain server binds its port itself (as a user runs it) and counts as started once
it answers; ``gapless serve`` counts as started on its manager's ``READY=1``, and each
reload's "reload → ready" is read from the manager's own log line
``generation N ready after X ms``. Every server runs without access log at log level
warning.

Example::

    server = plain_server("uvicorn", "gapless.bench.apps:asgi", timeout=30)
    server.start(TcpAddress("127.0.0.1", 8000))
    server.stop()
"""

from __future__ import annotations

import importlib.util
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from ..errors import BenchError
from ..proc.procfs import stat_fields
from ..sockets.addresses import TcpAddress
from .processes import OutputPump, descendants, stop_tree, wait_new_pid
from .servers import tool
from .strategies import RunStrategy

__all__ = [
    "SERVER_KINDS",
    "PlainServer",
    "ServeServer",
    "app_import_ms",
    "plain_server",
    "serve_refusal",
    "stack_start_ms",
    "tree_cpu_seconds",
]

SERVER_KINDS = ("uvicorn", "granian")
READY_LINE = re.compile(r"generation (\d+) ready after ([\d.]+) ms")
_QUIET = ("--no-access-log", "--log-level", "warning")


class PlainServer:
    """A server started as its users start it, binding ``{host}``:``{port}`` itself."""

    def __init__(self, argv: Sequence[str], *, timeout: float) -> None:
        self.argv = list(argv)
        self.timeout = timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._pump: OutputPump | None = None

    def spawn(self, address: TcpAddress) -> None:
        """Start it (the caller's CPU affinity is inherited); :meth:`wait_ready` next."""
        argv = [arg.format(host=address.host, port=address.port) for arg in self.argv]
        try:
            self._process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as exc:
            raise BenchError(f"cannot start {argv[0]!r}: {exc.strerror}") from None
        assert self._process.stdout is not None
        self._pump = OutputPump(os.dup(self._process.stdout.fileno()))
        self._process.stdout.close()

    @property
    def main_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def wait_ready(self, address: TcpAddress) -> None:
        """Return once it answers (it prints nothing at log level warning)."""
        wait_new_pid(address, (), self.timeout)

    def output_tail(self) -> list[str]:
        return self._pump.tail() if self._pump is not None else []

    def stop(self) -> None:
        """Stop it and its workers; reap it."""
        if self._process is None:
            return
        try:
            stop_tree(self._process.pid, self.timeout)
        finally:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait(self.timeout)
            if self._pump is not None:
                self._pump.close()


def plain_server(kind: str, app: str, *, timeout: float) -> PlainServer:
    """The plain server of ``kind``: uvicorn with the loop and parser gapless serve
    uses (asyncio; httptools when installed), or granian with one worker."""
    where = ("--host", "{host}", "--port", "{port}")
    if kind == "uvicorn":
        argv = [tool("uvicorn"), *where, "--loop", "asyncio", "--http", "auto", *_QUIET, app]
    elif kind == "granian":
        argv = [tool("granian"), "--interface", "asgi", *where, "--workers", "1", *_QUIET, app]
    else:
        raise BenchError(f"unknown server {kind!r}: use one of {', '.join(SERVER_KINDS)}")
    return PlainServer(argv, timeout=timeout)


class ServeServer(RunStrategy):
    """``gapless serve APP --server KIND``; reloads through its control socket."""

    name = "serve-speed"
    summary = "gapless serve, as a user runs it"
    default_command = ("gapless.bench.apps:asgi",)

    def __init__(self, kind: str, app: str, *, timeout: float) -> None:
        super().__init__((app,), timeout=timeout)
        self.kind = kind

    def _argv(self, address: TcpAddress) -> list[str]:
        serve = (sys.executable, "-m", "gapless.cli", "serve", *self.command)
        where = ("--bind", str(address), "--control", self._control)
        return [*serve, "--server", self.kind, *where, *_QUIET]

    def reload_ready_ms(self) -> float:
        """One ``gapless reload``, complete (the old generation exited); return the
        manager's own "ready after X ms" of the new generation.

        Raises:
            BenchError: the reload failed, or the manager logged no ready line.
        """
        pump = self._pumps[0]
        seen = pump.seen
        self.reload()
        match = READY_LINE.search(pump.wait_for(READY_LINE, self.timeout, after=seen))
        assert match is not None
        return float(match[2])


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid`` (with its children it reaped: a manager's
    old generations) and by its live descendants, from /proc: the figure that a
    busy machine disturbs least, as it counts only the server's own work."""
    ticks = 0
    for member in (pid, *descendants(pid)):
        fields = stat_fields(member)
        if fields is not None:  # utime, stime, cutime, cstime
            ticks += sum(int(field) for field in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def serve_refusal(kind: str) -> str | None:
    """Why ``gapless serve --server KIND`` cannot run here, or None if it can."""
    from ..serving.options import SERVERS

    if importlib.util.find_spec(kind) is None:
        return f"{kind} is not installed (pip install {kind})"
    if kind not in SERVERS:
        return (
            f"gapless serve --server {kind} is refused on this code (servers: {', '.join(SERVERS)})"
        )
    return None


def app_import_ms(app: str, kind: str, runs: int = 3) -> float:
    """Median milliseconds to import the app's module in a warm process: one that
    imported the interpreter's, gapless's and the server's modules already, as a
    warm-started generation has. What a reload cannot avoid paying."""
    module = app.partition(":")[0]
    code = (
        f"import time, importlib, gapless.serving.child, {kind}\n"
        "t = time.perf_counter()\n"
        f"importlib.import_module({module!r})\n"
        "print((time.perf_counter() - t) * 1000)\n"
    )
    return statistics.median(float(_python(code)) for _ in range(runs))


def stack_start_ms(kind: str, runs: int = 3) -> float:
    """Median milliseconds of a cold ``python -c 'import gapless.serving.child, KIND'``:
    the interpreter and the server stack, what a cold generation pays before the app."""
    code = (
        "import time\n"
        f"import gapless.serving.child, {kind}\n"
        "print((time.time() - float(__import__('sys').argv[1])) * 1000)\n"
    )
    return statistics.median(float(_python(code, stamp=True)) for _ in range(runs))


def _python(code: str, *, stamp: bool = False) -> str:
    argv = [sys.executable, "-c", code]
    if stamp:
        argv.append(repr(time.time()))  # wall clock: it must cross the process boundary
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise BenchError(f"timing an import failed: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()
