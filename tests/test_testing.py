"""gapless.testing.check_reloads: it passes an app that loses nothing, catches one
that loses requests, and fails at once, in one line, when it cannot check.

The first test runs the pytest example of docs/serve.md ("Testing your app") as
written, on tests/apps/serve_app.py.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import gapless.testing
from gapless.bench.prober import FAILURES
from gapless.errors import GaplessError, ReloadCheckError
from gapless.testing import ReloadReport, check_reloads

APPS = Path(__file__).parent / "apps"
DOC = Path(__file__).parents[1] / "docs" / "serve.md"
MARKER = "<!-- testing-example: tests/test_testing.py runs this block -->"


def _docs_example() -> str:
    text = DOC.read_text()
    assert MARKER in text, "docs/serve.md lost its testing example marker"
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER) :], re.S)
    assert block is not None
    return block.group(1)


def test_the_docs_example_passes_on_an_app_that_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "myapp.py").write_text("from serve_app import app\n")
    monkeypatch.syspath_prepend(str(APPS))  # the server imports with the test's path
    monkeypatch.syspath_prepend(str(tmp_path))
    reports: list[ReloadReport] = []

    def recording(*args: Any, **kwargs: Any) -> ReloadReport:
        reports.append(check_reloads(*args, **kwargs))
        return reports[-1]

    monkeypatch.setattr(gapless.testing, "check_reloads", recording)
    namespace: dict[str, Any] = {}
    exec(_docs_example(), namespace)
    namespace["test_reloads_lose_nothing"]()
    (report,) = reports
    assert (report.failed, report.reloads, report.examples) == (0, 3, ())
    assert report.requests >= 550  # 200 requests/s for 3 s at least
    assert len(report.ready_seconds) == len(report.retired_seconds) == 3
    assert all(
        0 < ready <= retired
        for ready, retired in zip(report.ready_seconds, report.retired_seconds, strict=True)
    )
    assert report.line == f"{report.requests} requests, 0 failed, 3 reloads"


def test_a_server_without_a_drain_is_caught_losing_requests() -> None:
    report = check_reloads([sys.executable, str(APPS / "drop_on_term.py")], reloads=2, duration=2)
    assert report.reloads == 2
    assert report.failed > 0, "each reload cuts the requests the old server holds"
    assert set(report.by_class) <= set(FAILURES)
    assert sum(report.by_class.values()) == report.failed
    assert report.examples and all(example.reload in (1, 2) for example in report.examples)
    with pytest.raises(AssertionError) as caught:
        report.assert_no_loss()
    message = str(caught.value)
    assert "\n" not in message
    pattern = r"drop_on_term\.py: (\d+) of (\d+) requests failed over 2 reloads \((closed|reset) "
    match = re.match(r".*?" + pattern, message)
    assert match and int(match[1]) == report.failed, message
    assert "during reload 1" in message


@pytest.mark.parametrize(
    ("target", "options", "expected"),
    [
        ("myapp", {}, r"target 'myapp' is no MODULE:APP; pass e\.g\. 'myapp:app'"),
        ([], {}, r"the command is empty"),
        ("myapp:app", {"reloads": 0}, r"reloads=0; pass 1 or more"),
        ("myapp:app", {"rate": 0.0}, r"rate=0\.0; pass a positive number"),
        ("myapp:app", {"duration": -1.0}, r"duration=-1\.0; pass a positive number"),
        ("myapp:app", {"bind": "unix:/tmp/x.sock"}, r"bind='unix:/tmp/x\.sock' is no TCP address"),
        ("myapp:app", {"bind": "127.0.0.1:99999"}, r"invalid bind '127\.0\.0\.1:99999'"),
    ],
)
def test_bad_arguments_are_named_in_one_line(
    target: str | list[str], options: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ReloadCheckError, match=expected) as caught:
        check_reloads(target, **options)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, GaplessError)


def test_an_app_that_cannot_start_fails_at_once_not_at_the_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(ReloadCheckError) as caught:
        check_reloads("nosuchmodule_for_gapless:app", timeout=30)
    assert time.monotonic() - start < 10, "the manager's exit must end the wait"
    message = str(caught.value)
    assert "\n" not in message
    assert "gapless serve exited with code 2 before it was ready" in message
    assert "nosuchmodule_for_gapless" in message.partition("last lines:")[2]


def test_an_app_never_ready_fails_at_the_timeout_naming_it() -> None:
    command = [sys.executable, str(APPS / "never_ready.py")]
    with pytest.raises(
        ReloadCheckError,
        match=r"gapless run was not ready within 1 s; if it starts slowly, raise timeout=",
    ) as caught:
        check_reloads(command, options=["--ready", "notify"], timeout=1)
    assert "\n" not in str(caught.value)


def test_env_reaches_the_app_and_its_failed_start_is_told_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(APPS))
    with pytest.raises(ReloadCheckError) as caught:
        check_reloads("serve_app:app", env={"SERVE_APP_FAIL": "1"}, timeout=30)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("check_reloads('serve_app:app'): gapless serve exited with code")
    assert "Application startup failed" in message  # the reason, from its output


def test_a_failed_reload_is_told_in_one_line(tmp_path: Path) -> None:
    started = tmp_path / "started"  # the first generation serves, the next exits 3
    script = f'[ -e "{started}" ] && exit 3; touch "{started}"; exec "$0" "$1"'
    command = ["sh", "-c", script, sys.executable, str(APPS / "drop_on_term.py")]
    with pytest.raises(
        ReloadCheckError, match=r"gapless reload failed: .*exited with code 3"
    ) as caught:
        check_reloads(command, reloads=1, duration=1, timeout=30)
    assert "\n" not in str(caught.value)
