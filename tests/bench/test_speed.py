"""gapless bench --speed: one short run of every row prints the table, 0 failed; the
ratios are to the plain server of the same kind; options of the other mode are refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gapless.bench.cli import main
from gapless.bench.speed import Row, RunRecord, SpeedConfig, SpeedResult
from gapless.bench.speed_report import format_speed, summarize_speed
from gapless.bench.wrk import WrkReport, wrk_path

UVICORN_ROWS = ("plain uvicorn", "gapless serve, steady", "gapless serve, reload every 1 s")
GRANIAN_ROWS = (
    "plain granian",
    "gapless serve --server granian, steady",
    "gapless serve --server granian, reload every 1 s",
)
# | label | req/s | ÷ plain | p99 | ÷ plain | CPU/req | ÷ plain | failed (wrk + prober) | reloads |
LINE = re.compile(
    r"^\| ([^|]+) \| ([\d,]+) \| [\d.-]+ \| [\d.]+ \| [\d.-]+ \| \d+ \| [\d.-]+ "
    r"\| (\d+) \(.*\) \| (\d+) "
)


@pytest.mark.skipif(wrk_path() is None, reason="wrk is not installed (apt-get install wrk)")
def test_every_row_runs_with_one_reload_and_nothing_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "speed.json"
    argv = ["--speed", "--seconds", "2", "--reload-every", "1", "--rounds", "1"]
    code = main([*argv, "--json", str(report)])
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0][2:]: line for line in out.splitlines() if line.startswith("| ")}
    for label in (*UVICORN_ROWS, *GRANIAN_ROWS):
        assert label in rows, out
        if "| skipped: " in rows[label]:
            # granian's rows skip, with the reason, while gapless serve refuses granian
            assert "refused" in rows[label] or "not installed" in rows[label], out
            continue
        match = LINE.match(rows[label])
        assert match, rows[label]
        assert float(match[2].replace(",", "")) > 0, rows[label]
        assert match[3] == "0", f"failed requests in {label}: {out}"
        assert match[4] == ("1" if "reload every" in label else "0"), out
    assert "gapless serve, reload every 1 s" in out and "app's own import" in out
    assert re.search(r"^load average [\d.]+ at start, [\d.]+ at end$", out, re.M), out
    assert code == 0, out
    document = json.loads(report.read_text())
    reloading = [run for run in document["runs"] if "reload every" in run["row"]]
    assert reloading and all(len(run["ready_ms"]) == 1 for run in reloading), document


def test_ratios_are_to_the_plain_server_of_the_same_kind() -> None:
    config = SpeedConfig(rounds=2, servers=("uvicorn",))
    rows = [Row("uvicorn", mode) for mode in ("plain", "steady", "reloading")]
    result = SpeedResult(config, rows, {}, [0], [1])
    figures = {"plain": (40_000, 1000, 1000), "steady": (36_000, 1200, 1400)}
    figures["reloading"] = (20_000, 5000, 5000)
    for number in range(2):
        for row in rows:
            rate, p99_a, p99_b = figures[row.mode]
            p99 = p99_a if number == 0 else p99_b
            wrk = WrkReport(rate, 1_000_000, 0, 0, 0, 0, 0, 0, p99_us=p99)
            ready = [150.0, 250.0] if row.mode == "reloading" else []
            cpu = rate * 25e-6 * (1.2 if row.mode == "steady" else 1.0)  # 25 µs/request
            record = RunRecord(row, number, wrk=wrk, ready_ms=ready, cpu_seconds=cpu)
            result.runs.append(record)
    by_mode = {s.row.mode: s for s in summarize_speed(result)}
    assert by_mode["steady"].rate_ratio == pytest.approx(0.9)
    assert by_mode["steady"].p99_ratio == pytest.approx(1.3)  # median 1.3 ms ÷ 1.0 ms
    assert by_mode["steady"].cpu_ratio == pytest.approx(1.2)
    assert by_mode["reloading"].rate_ratio == pytest.approx(0.5)
    assert by_mode["reloading"].reloads == 4 and by_mode["reloading"].ready_ms == 200.0
    text = format_speed(result)
    assert "reloading ÷ plain uvicorn: 0.50 (goal ≥ 0.85) NOT met" in text, text
    assert "failed requests, reloading: 0 (goal ≤ 0) met" in text, text


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--rounds", "2"], "--rounds needs --speed"),
        (["--speed", "--strategy", "naive"], "--strategy has no effect with --speed"),
        (["--speed", "--servers", "nginx"], "invalid --servers 'nginx'"),
    ],
)
def test_an_option_of_the_other_mode_is_refused(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert says in capsys.readouterr().err
