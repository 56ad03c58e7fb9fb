"""gapless bench: it sees failures where there are some, none where there are none,
and reads wrk's report. Short runs on real servers; the peer table is bench/peers.py."""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gapless.bench.cli import main
from gapless.bench.prober import Prober, ProberConfig, Sample
from gapless.bench.report import summarize
from gapless.bench.runner import BenchConfig, BenchResult, run_bench
from gapless.bench.strategies import make_strategy
from gapless.bench.strategy import ReloadTiming
from gapless.bench.wrk import WrkRun, parse_report, wrk_path
from gapless.errors import BenchError
from gapless.sockets.addresses import TcpAddress

SUMMARY = re.compile(r"^(\d+) requests, (\d+) failed, (\d+) reloads$")


def test_naive_restart_is_seen_to_fail() -> None:
    result = run_bench(BenchConfig(strategy="naive", reloads=2, duration=3.0, wrk=False))
    summary = summarize(result)
    assert summary.reloads == 2
    assert summary.prober.failed > 0, "the bench must detect a naive restart's failures"
    assert summary.in_reloads.failed == summary.prober.failed  # all inside reload windows
    assert summary.prober.by_class["refused"] > 0


def test_library_mode_demo_loses_nothing_over_three_reloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--strategy",
        "library",
        "--reloads",
        "3",
        "--duration",
        "4",
        "--rate",
        "100",
        "--no-wrk",
    ]
    code = main([*argv, "--output", str(tmp_path)])
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    match = SUMMARY.match(last)
    assert match, out
    assert (match[2], match[3]) == ("0", "3"), out
    assert int(match[1]) >= 350
    assert code == 0
    (result_file,) = tmp_path.glob("library-*.json")
    result = json.loads(result_file.read_text())
    assert result["failed"] == 0 and len(result["reloads"]) == 3
    assert all(r["signalled"] < r["ready"] <= r["old_exited"] for r in result["reloads"])


def test_a_server_that_never_listens_fails_loudly_and_leaves_nothing() -> None:
    command = (sys.executable, "-c", "import sys; sys.exit('no {port} for me')")
    with pytest.raises(BenchError, match="printed no line like"):
        run_bench(BenchConfig(strategy="naive", command=command, wrk=False, timeout=10))


def test_unknown_strategy_and_missing_placeholder_are_named() -> None:
    with pytest.raises(BenchError, match="unknown strategy 'nope'"):
        make_strategy("nope")
    with pytest.raises(BenchError, match=r"put \{address\}"):
        make_strategy("gunicorn-hup", ["gunicorn", "app:app"])


def test_wrk_lua_report_parses() -> None:
    line = (
        'WRK_JSON {"requests": 10, "duration_us": 1000000, "bytes": 900, "connect": 1, '
        '"read": 2, "write": 3, "timeout": 4, "non_2xx": 5, "p50_us": 80, "p99_us": 900, '
        '"max_us": 1200}'
    )
    report = parse_report(f"Running 1s test\n{line}\n")
    assert (report.requests, report.socket_errors, report.non_2xx, report.failed) == (10, 10, 5, 15)


@pytest.mark.skipif(wrk_path() is None, reason="wrk is not installed (apt-get install wrk)")
def test_wrk_run_reports_through_its_lua_script(http_server: TcpAddress) -> None:
    run = WrkRun(http_server, duration=1, connections=2, cpus=[0])
    run.start()
    report = run.finish(timeout=30)
    assert report.requests > 0
    assert (report.socket_errors, report.non_2xx) == (0, 0)


def test_prober_classifies_a_refused_connection() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = TcpAddress("127.0.0.1", sock.getsockname()[1])
    # closed now: nothing listens there any more
    prober = Prober(ProberConfig(address, rate=100))
    prober.start(t0 := time.monotonic())
    prober.finish_at(t0 + 0.05)
    samples = prober.join()
    assert samples and {sample.outcome for sample in samples} == {"refused"}


def test_summary_puts_failures_in_the_reload_window_they_overlap() -> None:
    result = BenchResult(BenchConfig(), TcpAddress("127.0.0.1", 1), ["x"], t0=100.0, end=110.0)
    result.samples = [
        Sample(1.0, 0.01, "ok"),
        Sample(4.9, 0.2, "reset"),  # starts before the window, fails inside it
        Sample(5.5, 0.01, "refused"),
        Sample(8.0, 0.01, "ok"),
    ]
    result.reloads = [ReloadTiming(105.0, 106.0, 105.5, (1,), (2,))]
    summary = summarize(result)
    assert summary.window_failures == [2]
    assert (summary.steady.requests, summary.steady.failed) == (2, 0)
    assert summary.line == "4 requests, 2 failed, 1 reloads"


@pytest.fixture
def http_server() -> Iterator[TcpAddress]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield TcpAddress("127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
