"""The runner's own parts: loading the application, choosing its interface, and
its one-line errors (exit 3) when it cannot start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from serve_harness import APPS, Handover, runner_argv

from gapless.errors import ServeError
from gapless.integrations.common import listen_backlog
from gapless.serving.child import detect_interface, load_app


def test_load_app_finds_a_dotted_attribute() -> None:
    assert load_app("serve_harness:Handover.start") is Handover.start


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("serve_app", "invalid application 'serve_app': write MODULE:APP"),
        ("no_such_module:app", "cannot import 'no_such_module'"),
        ("serve_harness:nothing", "no attribute 'nothing' in 'serve_harness:nothing'"),
    ],
)
def test_load_app_names_the_bad_input(spec: str, message: str) -> None:
    with pytest.raises(ServeError, match=message):
        load_app(spec)


async def _asgi(scope: object, receive: object, send: object) -> None:
    pass


class _AsgiClass:
    async def __call__(self, scope: object, receive: object, send: object) -> None:
        pass


def _wsgi(environ: object, start_response: object) -> list[bytes]:
    return []


@pytest.mark.parametrize(
    ("app", "interface"), [(_asgi, "asgi"), (_AsgiClass(), "asgi"), (_wsgi, "wsgi")]
)
def test_interface_is_detected_from_the_callable(app: object, interface: str) -> None:
    assert detect_interface(app) == interface


def test_a_non_callable_app_is_refused() -> None:
    with pytest.raises(ServeError, match="is not callable"):
        detect_interface(42)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "gapless.serving.child", *args]
    return subprocess.run(argv, cwd=APPS, capture_output=True, text=True, timeout=30, env=env)


def test_missing_module_exits_3_with_one_line() -> None:
    result = _run("no_such_module:app", "--bind", "127.0.0.1:0")
    assert result.returncode == 3
    assert result.stderr.splitlines()[-1].startswith(
        "gapless serve: error: cannot import 'no_such_module'"
    )


def test_no_socket_exits_3_and_says_what_to_do() -> None:
    result = _run("serve_app:app")
    assert result.returncode == 3
    assert "pass --bind ADDRESS" in result.stderr


def test_unreadable_certificate_exits_3_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "cert.pem")
    result = _run(
        "serve_app:app", "--bind", "127.0.0.1:0", "--certfile", missing, "--keyfile", missing
    )
    assert result.returncode == 3
    assert f"cannot read --certfile {missing!r}" in result.stderr


def test_bad_option_exits_2() -> None:
    result = _run("serve_app:app", "--drain-timeout", "soon")
    assert result.returncode == 2
    assert "invalid duration 'soon'" in result.stderr


def test_failed_lifespan_startup_exits_3_without_ready(tmp_path: Path) -> None:
    handover = Handover(runner_argv("serve_app:app"), env={"SERVE_APP_FAIL": "1"})
    with handover, pytest.raises(AssertionError, match="exited with code 3 before READY=1"):
        handover.start()


def test_serving_keeps_the_shared_sockets_backlog() -> None:
    # asyncio calls listen() again on the socket it serves: that must not shrink
    # the queue every generation shares.
    with Handover(runner_argv("serve_app:app"), backlog=1234) as handover:
        handover.start()
        assert listen_backlog(handover.sock) == 1234
