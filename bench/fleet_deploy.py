"""A fleet run: three hosts behind HAProxy, under load, through N rolling deploys.

Deploy modes, each rolling host by host (the next host starts only once the last
one serves again, as ``maxUnavailable: 1`` or a Nomad ``max_parallel = 1`` does):

===================  ===========================================================
``reload``           ``gapless reload`` on the host: same manager, new generation;
                     done when the old generation exited
``replace``          as a Kubernetes pod: TERM to a manager started with
                     ``--shutdown-delay``; its health endpoint says 503 draining,
                     HAProxy takes it DOWN, it drains and exits; a new instance
                     (the next version) starts on the same address; done once
                     HAProxy has it UP again
``replace-no-delay`` the same with no shutdown delay: what the delay prevents
===================  ===========================================================

With ``drain_mode="runtime-api"`` a replacement is driven the way operators do it
by hand instead: ``state drain``, wait until the host's ``scur`` is 0, ``state
maint``, TERM (no delay needed: no traffic is sent to it any more), start the new
instance, ``state ready``, wait UP.

Example::

    result = run_fleet(FleetConfig(deploy="replace", deploys=1), directory)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleet_haproxy import Backend, Haproxy, HaproxyConfig
from fleet_hosts import Host, HostSpec, free_port
from fleet_verify import served_version

from gapless.bench.prober import Prober, ProberConfig, Sample
from gapless.bench.wrk import WrkReport, WrkRun, wrk_path
from gapless.errors import BenchError
from gapless.sockets.addresses import TcpAddress

__all__ = ["ADDRESSES", "DEPLOYS", "DRAIN_MODES", "FleetConfig", "FleetResult", "Step", "run_fleet"]

ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
DEPLOYS = ("reload", "replace", "replace-no-delay")
DRAIN_MODES = ("health", "runtime-api")


@dataclass(frozen=True)
class FleetConfig:
    deploy: str = "replace"
    deploys: int = 10
    hosts: int = 3  # 2 or 3: one is always out during a replacement
    rolled: int = 0  # hosts each deploy goes through, the first ones; 0: all
    server: str = "serve"
    drain_mode: str = "health"
    shutdown_delay: float = 1.0
    drain_timeout: float = 10.0
    rate: float = 200.0
    connections: int = 16
    wrk_connections: int = 4  # 0: no wrk
    gap: float = 1.0  # steady seconds before the first deploy, between deploys and after
    redispatch: bool = False
    timeout: float = 30.0

    @property
    def host_delay(self) -> float:
        """The hosts' --shutdown-delay: only the health-driven replacement wants one."""
        drained_by_hand = self.drain_mode == "runtime-api"
        return self.shutdown_delay if self.deploy == "replace" and not drained_by_hand else 0.0


@dataclass
class Step:
    """One host's part of one deploy; ``events`` are seconds after ``start``."""

    deploy: int
    host: str
    start: float
    end: float = 0.0
    events: dict[str, float] = field(default_factory=dict)


@dataclass
class FleetResult:
    config: FleetConfig
    frontend: TcpAddress
    haproxy_config: str = ""
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    t0: float = 0.0
    end: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    windows: list[tuple[float, float]] = field(default_factory=list)  # each deploy's
    steps: list[Step] = field(default_factory=list)
    wrk: WrkReport | None = None
    haproxy: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run_fleet(config: FleetConfig, directory: str) -> FleetResult:
    """Start the fleet and HAProxy, load them, deploy ``config.deploys`` times, stop.

    Raises:
        BenchError: something did not start, a deploy step timed out, or a host
            served another version than deployed.
    """
    hosts, proxy = _build(config, directory)
    result = FleetResult(config, proxy.config.frontend, load_average=os.getloadavg())
    result.haproxy_config = Path(proxy.path).read_text()
    try:
        for host in hosts:
            host.launch(1)
        for host in hosts:
            host.wait_ready(config.timeout)
        proxy.start(config.timeout)
        for host in hosts:
            proxy.wait_status(host.spec.name, "UP", config.timeout)
        _load_and_deploy(config, hosts, proxy, result)
        result.haproxy = _counters(proxy)
    finally:
        proxy.stop()  # first: its keep-alive connections closed, the hosts drain at once
        for host in hosts:
            host.terminate()
        for host in hosts:
            host.stop(config.shutdown_delay + config.drain_timeout + 5)
    return result


def _build(config: FleetConfig, directory: str) -> tuple[list[Host], Haproxy]:
    addresses = list(ADDRESSES[: config.hosts])
    web = free_port(addresses)
    health = free_port(addresses, avoid=[web])
    specs = [
        HostSpec(
            f"host{number}",
            TcpAddress(address, web),
            TcpAddress(address, health),
            config.server,
            config.host_delay,
            config.drain_timeout,
        )
        for number, address in enumerate(addresses, 1)
    ]
    frontend = TcpAddress("127.0.0.1", free_port(["127.0.0.1"]))
    backends = tuple(Backend(spec.name, spec.web, spec.health) for spec in specs)
    runtime = os.path.join(directory, "haproxy.sock")
    proxy = Haproxy(
        HaproxyConfig(frontend, backends, runtime, redispatch=config.redispatch), directory
    )
    return [Host(spec, directory) for spec in specs], proxy


def _load_and_deploy(
    config: FleetConfig, hosts: list[Host], proxy: Haproxy, result: FleetResult
) -> None:
    prober = Prober(ProberConfig(result.frontend, rate=config.rate, connections=config.connections))
    wrk = _start_wrk(config, result)
    pacer = threading.Event()  # never set: its wait() paces the steady gaps
    result.t0 = time.monotonic()
    prober.start(result.t0)
    try:
        pacer.wait(config.gap)
        for number in range(1, config.deploys + 1):
            start = time.monotonic()
            for host in hosts[: config.rolled or len(hosts)]:
                result.steps.append(_deploy_host(config, number, host, proxy))
            result.windows.append((start - result.t0, time.monotonic() - result.t0))
            pacer.wait(config.gap)
        result.end = time.monotonic()
        prober.finish_at(result.end)
        if wrk is not None:
            result.wrk = wrk.interrupt(timeout=config.timeout)
    except BaseException:
        prober.finish_at(time.monotonic())
        if wrk is not None:
            wrk.kill()
        raise
    finally:
        result.samples = prober.join()


def _start_wrk(config: FleetConfig, result: FleetResult) -> WrkRun | None:
    if config.wrk_connections <= 0:
        return None
    if wrk_path() is None:
        result.notes.append("wrk is not installed (apt-get install wrk): prober only")
        return None
    per_deploy = config.hosts * (config.shutdown_delay + config.drain_timeout + config.timeout)
    run = WrkRun(
        result.frontend,
        duration=config.gap * (config.deploys + 2) + config.deploys * per_deploy,
        connections=config.wrk_connections,
        cpus=[0],  # one thread: the load must leave the fleet (and others) CPU
    )
    run.start()
    return run


def _deploy_host(config: FleetConfig, number: int, host: Host, proxy: Haproxy) -> Step:
    step = Step(number, host.spec.name, time.monotonic())
    version = number + 1
    mark: Callable[[str], None] = lambda name: step.events.__setitem__(  # noqa: E731
        name, round(time.monotonic() - step.start, 4)
    )
    if config.deploy == "reload":
        ready, exited = host.reload(version, config.timeout)
        step.events.update(ready=ready - step.start, old_exited=exited - step.start)
    elif config.drain_mode == "runtime-api":
        _replace_by_hand(config, host, proxy, version, mark)
    else:
        _replace(config, host, proxy, version, mark)
    step.end = time.monotonic()
    got = served_version(host.spec.web, config.timeout)
    if got != str(version):
        raise BenchError(
            f"{host.spec.name} serves version {got} after deploy {number}, not {version}"
        )
    return step


def _replace(
    config: FleetConfig, host: Host, proxy: Haproxy, version: int, mark: Callable[[str], None]
) -> None:
    name, stop_by = host.spec.name, config.host_delay + config.drain_timeout + config.timeout
    host.terminate()
    mark("term")
    if config.host_delay > 0:  # the delay is there so that HAProxy sees 503 first
        proxy.wait_status(name, "DOWN", config.timeout)
        mark("down")
    host.wait_exited(stop_by)
    mark("exited")
    if config.host_delay <= 0:
        proxy.wait_status(name, "DOWN", config.timeout)
        mark("down")
    host.start(version, config.timeout)
    mark("ready")
    proxy.wait_status(name, "UP", config.timeout)
    mark("up")


def _replace_by_hand(
    config: FleetConfig, host: Host, proxy: Haproxy, version: int, mark: Callable[[str], None]
) -> None:
    name = host.spec.name
    proxy.set_state(name, "drain")
    proxy.wait_until(name, "0", "scur", config.timeout)
    mark("sessions_0")
    proxy.set_state(name, "maint")
    host.terminate()
    host.wait_exited(config.drain_timeout + config.timeout)
    mark("exited")
    host.start(version, config.timeout)
    mark("ready")
    proxy.set_state(name, "ready")
    proxy.wait_status(name, "UP", config.timeout)
    mark("up")


def _counters(proxy: Haproxy) -> dict[str, int]:
    """HAProxy's own view of the run: what it answered 5xx, retried, redispatched."""
    row = proxy.stats()["BACKEND"]
    names = ("stot", "hrsp_5xx", "econ", "eresp", "wretr", "wredis", "cli_abrt", "srv_abrt")
    return {name: int(row.get(name) or 0) for name in names}
