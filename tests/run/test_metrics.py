"""The health endpoint's paths and its Prometheus metrics (gapless.run.extras.health,
gapless.run.extras.metrics), on a real manager: /ready, /live, /metrics, 404."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from manager_harness import DEMO, TIMEOUT, Manager, app, running, write_command

from gapless.run.extras.answers import answer
from gapless.run.extras.metrics import Histogram, Metrics

HEALTH = ("--health-bind", "127.0.0.1:0")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    """Status, Content-Type and body of one request to the endpoint."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        connection.close()


def health_port(manager: Manager) -> int:
    return int(manager.wait_line(r"health endpoint on 127\.0\.0\.1:(\d+)").group(1))


# A small parser of the text format 0.0.4, strict where the format is -----------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class Family:
    kind: str = ""
    help: str = ""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]


def parse(text: str) -> dict[str, Family]:
    """Families by name; every sample belongs to a family declared (HELP, TYPE) before it."""
    assert text.endswith("\n"), "the exposition ends with a line feed"
    families: dict[str, Family] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, help = line[7:].split(" ", 1)
            assert name not in families, f"{name} declared twice"
            families[name] = Family(help=help)
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            families[name].kind = kind
        else:
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            family = _family_of(families, name)
            pairs = frozenset(_LABEL.findall(labels or ""))
            family.samples[(name, pairs)] = float(value)
    for name, family in families.items():
        assert name.startswith("gapless_") and family.kind and family.samples, name
        if family.kind == "counter":
            assert name.endswith("_total"), name
    return families


def _family_of(families: dict[str, Family], name: str) -> Family:
    for suffix in ("", "_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix) if suffix else name
        if base in families and (not suffix or families[base].kind == "histogram"):
            return families[base]
    raise AssertionError(f"sample {name} before its HELP and TYPE")


def buckets(family: Family, name: str) -> list[tuple[float, float]]:
    """(le, count) of a histogram, by le."""
    found = []
    for (sample, labels), value in family.samples.items():
        if sample == f"{name}_bucket":
            found.append((float(dict(labels)["le"]), value))
    return sorted(found)


def check_histogram(families: dict[str, Family], name: str) -> float:
    """Its buckets are cumulative and end at +Inf == _count; returns _count."""
    family = families[name]
    assert family.kind == "histogram"
    counts = [count for _, count in buckets(family, name)]
    assert counts == sorted(counts), f"{name} buckets not cumulative: {counts}"
    count = family.value(f"{name}_count")
    assert counts[-1] == count and buckets(family, name)[-1][0] == float("inf")
    return count


def scrape(port: int) -> dict[str, Family]:
    code, content_type, body = get(port, "/metrics")
    assert (code, content_type) == (200, CONTENT_TYPE)
    return parse(body)


# Tests ------------------------------------------------------------------------------


def test_paths_during_a_slow_start(tmp_path: Path) -> None:
    """Before generation 1 is ready: /live 200 (no restart of a slow pod), /ready and /
    503, /metrics answers, another path 404; once ready, /ready and / say 200."""
    slow = app("ready_on_usr1.py", *DEMO)
    with running(tmp_path, slow, *HEALTH, ready_line=None) as manager:
        port = health_port(manager)
        pid = int(manager.wait_line(r"generation 1 started as pid (\d+)").group(1))
        manager.wait_line("waiting for SIGUSR1")
        assert get(port, "/live")[::2] == (200, "live\n")
        assert get(port, "/ready")[::2] == (503, "starting\n")
        assert get(port, "/")[::2] == (503, "starting\n")
        assert get(port, "/ready?verbose=1")[0] == 503
        assert get(port, "/nope")[0] == get(port, "/healthz")[0] == 404
        assert get(port, "/live", "HEAD")[::2] == (200, "")
        starting = scrape(port)
        assert starting["gapless_generation"].value("gapless_generation") == 0
        assert starting["gapless_ready"].value("gapless_ready") == 0
        os.kill(pid, signal.SIGUSR1)
        manager.wait_line("generation 1 ready after")
        assert get(port, "/ready")[::2] == (200, "serving\n")
        assert get(port, "/")[::2] == (200, "serving\n")
        ready = scrape(port)
        assert ready["gapless_generation"].value("gapless_generation") == 1
        assert ready["gapless_ready"].value("gapless_ready") == 1
        assert ready["gapless_generation_start_time_seconds"].samples
        assert check_histogram(ready, "gapless_reload_ready_seconds") == 0  # a start, not a reload


def test_counters_move_with_reloads_drains_and_kills(tmp_path: Path) -> None:
    """Generation 1 holds a connection and ignores TERM: the reload to the demo is ok,
    generation 1 is killed at the drain deadline with that connection; then a reload
    that fails. Each counter and histogram says so."""
    command = tmp_path / "command.json"
    argv = write_command(command, app("hold_ignore_term.py"))
    with running(tmp_path, argv, *HEALTH, "--drain-timeout", "0.5") as manager:
        port = health_port(manager)
        with socket.create_connection(("127.0.0.1", manager.port), TIMEOUT) as client:
            client.settimeout(TIMEOUT)
            assert client.recv(1) == b"+"  # generation 1 holds it
            write_command(command, DEMO)
            assert manager.call("reload")["ok"]
            manager.wait_line(r"generation 1 draining: .* 1 connection left")
            manager.wait_line(r"generation 1 killed \(SIGKILL")
            assert client.recv(1) == b""  # closed by the kill
        write_command(command, app("exit3.py"))
        assert not manager.call("reload")["ok"]
        families = scrape(port)
    assert families["gapless_reloads_total"].value("gapless_reloads_total", outcome="ok") == 1
    assert families["gapless_reloads_total"].value("gapless_reloads_total", outcome="failed") == 1
    assert check_histogram(families, "gapless_reload_ready_seconds") == 1
    assert check_histogram(families, "gapless_drain_seconds") == 1
    drained = families["gapless_drain_seconds"].value("gapless_drain_seconds_sum")
    # Timed from the draining event (logged just after the signal) to the kill at the
    # 0.5 s deadline: about 0.5 s, a little less by the time the signal took.
    assert 0.3 <= drained < TIMEOUT, drained
    for name in ("drain_connections", "drain_kills", "drain_force_closed_connections"):
        assert families[f"gapless_{name}_total"].value(f"gapless_{name}_total") == 1, name
    assert families["gapless_generation"].value("gapless_generation") == 2


def test_live_while_the_stop_drains(tmp_path: Path) -> None:
    """Stopping, the generation draining: /live 200, /ready 503 draining."""
    with running(tmp_path, app("hold_ignore_term.py"), *HEALTH, "--drain-timeout", "30") as manager:
        port = health_port(manager)
        manager.signal(signal.SIGTERM)
        manager.wait_line("generation 1 draining")
        assert get(port, "/live")[::2] == (200, "live\n")
        assert get(port, "/ready")[::2] == (503, "draining\n")
        assert scrape(port)["gapless_ready"].value("gapless_ready") == 0
        manager.signal(signal.SIGTERM)  # hurries: the generation is killed, the manager exits
        assert manager.wait() == 0
    assert any("generation 1 killed" in line for line in manager.lines)


# The counters alone, fed as the event log feeds them ------------------------------


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.5, 0.5, 3.0):
        histogram.observe(value)
    assert histogram.samples("h") == [
        'h_bucket{le="0.1"} 1',
        'h_bucket{le="1"} 3',
        'h_bucket{le="+Inf"} 4',
        "h_sum 4.05",
        "h_count 4",
    ]


def test_failures_that_are_not_reloads_are_not_counted() -> None:
    metrics = Metrics(started_at=1000.0, upgrades=2, recoveries=1, clock=lambda: 2000.0)
    metrics.send({"event": "failed", "progress": "cannot exec python: gone; serving on"})
    metrics.send({"event": "failed", "generation": 1, "progress": "start failed"})
    metrics.send({"event": "failed", "generation": None, "progress": "the manager is stopping"})
    families = parse(metrics.exposition("draining"))
    reloads = families["gapless_reloads_total"]
    assert reloads.value("gapless_reloads_total", outcome="failed") == 1
    assert families["gapless_manager_upgrades_total"].value("gapless_manager_upgrades_total") == 2
    start = families["gapless_manager_start_time_seconds"]
    assert start.value("gapless_manager_start_time_seconds") == 1000


def test_the_endpoint_and_its_counters_survive_an_upgrade_in_place(tmp_path: Path) -> None:
    """`gapless upgrade` keeps the health socket (same port, never closed) and the
    counters; the upgrade itself is counted."""
    with running(tmp_path, DEMO, *HEALTH) as manager:
        port = health_port(manager)
        assert manager.call("reload")["ok"]
        manager.wait_line(r"generation 1 \(pid \d+\) exited")  # its drain is counted
        before = scrape(port)
        answer = manager.call("upgrade")
        assert answer["ok"], answer
        manager.wait_line("resumed in place")
        assert get(port, "/ready")[::2] == (200, "serving\n")
        after = scrape(port)
    for name in ("gapless_reloads_total", "gapless_drain_seconds", "gapless_generation"):
        assert after[name].samples == before[name].samples, name
    assert after["gapless_manager_upgrades_total"].value("gapless_manager_upgrades_total") == 1
    assert after["gapless_manager_start_time_seconds"].samples == pytest.approx(
        before["gapless_manager_start_time_seconds"].samples
    )


def test_a_recovery_keeps_the_endpoint_and_counts_itself(tmp_path: Path) -> None:
    """A bug in the manager's loop re-executes it in place, the health socket too
    (before, --health-bind made the manager serve on without recovering)."""
    faults = {**os.environ, "GAPLESS_TEST_FAULTS": "1"}
    with running(tmp_path, DEMO, *HEALTH, env=faults) as manager:
        port = health_port(manager)
        assert manager.call("fault", where="loop")["ok"]
        manager.wait_line(rf"resumed in place as pid {manager.process.pid}")
        assert get(port, "/ready")[::2] == (200, "serving\n")
        families = scrape(port)
    recoveries = families["gapless_manager_recoveries_total"]
    assert recoveries.value("gapless_manager_recoveries_total") == 1
    assert families["gapless_generation"].value("gapless_generation") == 1


def test_a_request_line_that_cannot_be_read_is_answered_as_slash() -> None:
    """A probe cut short (or sent out of fds, see test_health.py) gets the state, as
    every probe did before paths: never a 404 for a path it did not send."""
    for request in (b"", b"GET", b"\r\n\r\n", b"GET * HTTP/1.1\r\n\r\n"):
        assert answer(request, "serving", None).startswith(b"HTTP/1.1 200 OK\r\n"), request
    missing = answer(b"GET /metrics HTTP/1.1\r\n\r\n", "serving", None)
    assert missing.startswith(b"HTTP/1.1 404 ")  # no metrics given: no such path
    assert missing.endswith(b"try /, /ready, /live\n")
