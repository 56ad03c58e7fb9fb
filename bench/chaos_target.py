"""The system under test of bench/chaos.py: one ``gapless run`` manager at a time,
its log, and the waits the campaign makes on it (each on an event, with a timeout).

The manager runs the server behind a wrapper that reads a *mode file* at each
start: ``serve`` execs the server (same pid), ``hang`` never gets ready, ``crash``
exits 3 at once. The campaign flips the file to order a bad start, as a deploy
changes the code on disk. Listeners are on fixed ports, so a manager restarted
after a stop serves the same address and the load never has to be told.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos_basics import (
    PYTHON,
    TIMEOUT,
    FaultProblem,
    ManagerGone,
    ask,
    cmdline,
    free_port,
    our_processes,
    port_holders,
    reap_adopted,
)
from chaos_log import ManagerLog

from gapless.bench.processes import still_running
from gapless.proc.procfs import all_stats

WRAPPER = '''\
"""A generation of bench/chaos.py: serve, hang or crash on start, as the mode file says."""
import os, signal, sys
mode = open(sys.argv[1]).read().strip()
if mode == "hang":
    while True:
        signal.pause()
if mode == "crash":
    print("chaos: crashing on start, as the mode file says", file=sys.stderr, flush=True)
    sys.exit(3)
os.execv(sys.argv[2], sys.argv[2:])
'''

WSGI_APP = """\
import os
def app(environ, start_response):
    body = f"pid {os.getpid()}\\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


@dataclass
class TargetConfig:
    workdir: Path
    server: str = "demo"  # or "gunicorn"
    ready_timeout: float = 2.0
    drain_timeout: float = 10.0
    pid_dir: Path | None = None  # a small tmpfs, for the full-disk fault
    log_path: Path | None = None  # the whole manager log, else only its tail is kept
    health: bool = False  # --health-bind (gapless upgrade is refused with it)


class Target:
    """The manager under test; ``start()`` it, fault it, ``settle()`` it, sample it."""

    def __init__(self, config: TargetConfig) -> None:
        self.config = config
        work = config.workdir
        self.port = free_port()
        self.health_port = free_port() if config.health else None
        self.control = str(work / "control.sock")
        self.mode_file = work / "mode"
        self.set_mode("serve")
        (work / "chaos_wrapper.py").write_text(WRAPPER)
        (work / "chaos_app.py").write_text(WSGI_APP)
        self.pid_file = None if config.pid_dir is None else str(config.pid_dir / "gapless.pid")
        self.leaders: set[int] = set()  # every generation leader any manager started
        self.process: subprocess.Popen[str] | None = None
        self.log: ManagerLog | None = None
        self.starts = 0
        self._sink = None if config.log_path is None else open(config.log_path, "w")  # noqa: SIM115

    # Starting and stopping ------------------------------------------------------

    def server_argv(self) -> tuple[list[str], list[str]]:
        """The server command and the ``gapless run`` options it needs."""
        if self.config.server == "gunicorn":
            gunicorn = str(Path(PYTHON).parent / "gunicorn")
            argv = [gunicorn, "-w", "2", "-k", "sync", "--no-control-socket"]
            argv += ["--chdir", str(self.config.workdir), "chaos_app:app"]
            return argv, ["--ready", "accept"]
        return [PYTHON, "-m", "gapless.demo", "--quiet", "--bind", "web=127.0.0.1:0"], []

    def argv(self) -> list[str]:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        server, options = self.server_argv()
        # The campaign raised its own soft limit for 1,000 connections; the manager
        # gets what a service usually has (systemd's LimitNOFILE=1024:524288).
        argv = ["prlimit", f"--nofile={min(soft, 1024)}:{hard}", PYTHON, "-m", "gapless.cli"]
        argv += ["run", "--control", self.control, "--log-format", "json", *options]
        argv += ["--bind", f"web=127.0.0.1:{self.port}"]
        if self.health_port is not None:
            argv += ["--health-bind", f"127.0.0.1:{self.health_port}"]
        argv += ["--ready-timeout", f"{self.config.ready_timeout:g}"]
        argv += ["--drain-timeout", f"{self.config.drain_timeout:g}"]
        if self.pid_file is not None:
            argv += ["--pid-file", self.pid_file]
        wrapper = [PYTHON, str(self.config.workdir / "chaos_wrapper.py"), str(self.mode_file)]
        return [*argv, "--", *wrapper, *server]

    def start(self) -> float:
        """Start a manager; return (monotonic) when its generation 1 was ready.

        Raises:
            FaultProblem: it exited or was not ready within TIMEOUT.
        """
        self.set_mode("serve")
        self.process = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            cwd=self.config.workdir,
        )
        assert self.process.stderr is not None
        self.log = ManagerLog(self.process.stderr, self._sink, self.leaders)
        self.log.start()
        self.starts += 1
        if not self.log.wait(lambda: 1 in self.log.ready if self.log else False):
            raise FaultProblem(f"a new manager was not ready within {TIMEOUT} s:\n{self.tail()}")
        return time.monotonic()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_exit(self, timeout: float = TIMEOUT) -> int | None:
        """The manager's exit code once it has exited, None if it runs after ``timeout``."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        assert self.log is not None
        self.log.join(TIMEOUT)  # its last lines, for the report
        return code

    def kill(self) -> None:
        """SIGKILL a manager that must go (it hung), and wait for it."""
        if self.alive():
            assert self.process is not None
            self.process.kill()
        self.wait_exit()

    def stop(self) -> int | None:
        """Stop the manager as a user would (``gapless stop``); return its exit code."""
        with contextlib.suppress(ManagerGone):
            self.call("stop", timeout=self.config.drain_timeout + TIMEOUT)
        return self.wait_exit()

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()

    def set_mode(self, mode: str) -> None:
        self.mode_file.write_text(mode + "\n")

    def tail(self) -> str:
        return "" if self.log is None else self.log.text()

    # Control ----------------------------------------------------------------------

    def call(self, cmd: str, timeout: float = TIMEOUT, **fields: Any) -> dict[str, Any]:
        """A control command; a manager that is gone or does not answer is ManagerGone."""
        try:
            return ask(self.control, cmd, timeout, **fields)
        except ManagerGone as exc:
            state = "exited" if not self.alive() else "does not answer"
            raise ManagerGone(f"the manager {state} ({exc})") from None

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def generation_pids(self) -> list[int]:
        """Every process of every generation, as the manager sees them."""
        return [pid for g in self.status()["generations"] for pid in g.get("pids") or [g["pid"]]]

    def active_pid(self) -> int:
        for generation in self.status()["generations"]:
            if generation["state"] == "active":
                return int(generation["pid"])
        raise FaultProblem("no generation is active")

    def settle(self, timeout: float = TIMEOUT + 10.0) -> dict[str, Any]:
        """Wait until exactly one generation runs, the active one, and return the status.

        Each round waits on what is pending: a starting generation's end in the
        log, a draining one's processes through pidfds. The last status is asked
        twice: by the second answer the manager has read every hang-up sent before
        the first one (see bench/long_run.py's settle).
        """
        deadline = time.monotonic() + timeout
        log = self.log
        assert log is not None
        while time.monotonic() < deadline:
            generations = self.status()["generations"]
            others = [g for g in generations if g["state"] != "active"]
            if len(generations) == 1 and not others:
                self.status()
                return self.status()
            left = deadline - time.monotonic()
            seen = log.lines
            for generation in others:
                if generation["state"] == "starting":
                    number = generation["generation"]
                    log.wait(lambda n=number: n in log.ready or n in log.ended, max(left, 0))
                else:
                    still_running(generation.get("pids") or [generation["pid"]], max(left, 0))
            if not others:  # none active: a replacement comes, or the manager ends
                log.wait(lambda s=seen: log.lines > s, min(max(left, 0), 1.0))
        raise FaultProblem(f"the manager did not settle within {timeout:g} s:\n{self.tail()}")

    # Samples and leftovers --------------------------------------------------------------

    def sample(self) -> tuple[int, int, int]:
        """The manager's open fds, RSS (kB) and zombie children."""
        pid = self.pid
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        zombies = sum(1 for _, f in all_stats() if f[0] == b"Z" and f[1] == b"%d" % pid)
        return fds, rss, zombies

    def left_behind(self) -> dict[int, str]:
        """Processes of any generation still alive, and holders of the listening port
        (pid: command line), once no manager runs; adopted zombies are reaped first."""
        reap_adopted(self.leaders)
        found = set(our_processes(self.leaders)) | port_holders(self.port)
        return {pid: cmdline(pid) for pid in sorted(found)}
