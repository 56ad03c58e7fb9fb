"""``gapless serve`` end to end: the manager, its generations of
``gapless.serving.child``, reloads through ``gapless reload`` under load, workers,
hooks, running as one generation under ``gapless run``, and its misuse errors."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from load import Wrk
from manager_harness import TIMEOUT, Manager, gapless_argv, running
from prober import Prober, probe
from serve_harness import APPS, gapless, reload, self_signed, serving

RELOADS = 5
needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


@needs_wrk
@pytest.mark.parametrize(
    "args", [["serve_app:app"], ["serve_wsgi_app:app", "--threads", "32"]], ids=["asgi", "wsgi"]
)
def test_reloads_under_load_lose_nothing(tmp_path: Path, args: list[str]) -> None:
    """wrk with keep-alive and wrk with ``Connection: close`` at once, and the prober."""
    with serving(tmp_path, *args) as manager:
        kept = Wrk(manager.port, tmp_path, connections=8)
        closing = Wrk(manager.port, tmp_path, connections=8, close=True)
        prober = Prober(manager.port, threads=2)
        for _ in range(RELOADS):
            reload(manager)
        for number in range(1, RELOADS + 1):
            manager.wait_line(rf"generation {number} \(pid \d+\) exited with code 0")
        results = {"keep-alive": kept.stop(), "close": closing.stop(), "prober": prober.stop()}
    for name, result in results.items():
        assert result.requests > (50 if name == "prober" else 300), (name, result.requests)
        assert result.failed == 0, (name, result.failures, result.examples[:3])


def _pids(manager: Manager, count: int) -> set[int]:
    """The pids answering, from enough new connections to reach each worker."""
    seen: set[int] = set()
    for _ in range(200):
        connection = http.client.HTTPConnection("127.0.0.1", manager.port)
        connection.request("GET", "/")
        seen.add(int(connection.getresponse().read().split()[1]))
        connection.close()
        if len(seen) == count:
            break
    return seen


def test_workers_share_the_sockets_and_are_replaced_together(tmp_path: Path) -> None:
    with serving(tmp_path, "serve_app:app", "--workers", "2") as manager:
        first = manager.status()["generations"][0]
        assert len(first["pids"]) == 3  # the leader and two workers
        assert _pids(manager, 2) == set(first["pids"][1:])
        manager.signal(signal.SIGHUP)
        manager.wait_line(r"generation 2 ready after")
        manager.wait_line(r"generation 1 \(pid \d+\) exited with code 0")
        second = next(g for g in manager.status()["generations"] if g["state"] == "active")
        assert _pids(manager, 2) == set(second["pids"][1:])
        os.kill(second["pids"][1], signal.SIGKILL)  # a worker dies: the leader replaces it
        dead = second["pids"][1]
        replaced = manager.wait_line(rf"worker {dead} was killed by SIGKILL; started worker (\d+)")
        manager.wait_line(rf"serving asgi on .* pid {replaced.group(1)}$")
        assert probe(http.client.HTTPConnection("127.0.0.1", manager.port, timeout=5)) is None


def test_hooks_run_in_order_and_before_upgrade_can_veto_a_reload(tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"
    env = {"SERVE_HOOKS_LOG": str(log)}
    with serving(tmp_path, "serve_app:app", "--hooks", "serve_hooks", env=env) as manager:
        Path(f"{log}.veto").touch()
        result = gapless("reload", "--control", manager.control)
        assert result.returncode == 1
        assert "the migration check failed" in result.stderr
        assert probe(http.client.HTTPConnection("127.0.0.1", manager.port)) is None
        Path(f"{log}.veto").unlink()
        reload(manager)
        manager.wait_line(r"generation 1 \(pid \d+\) exited with code 0")
    events = [line.split() for line in log.read_text().splitlines()]
    pids = list(dict.fromkeys(pid for pid, _ in events))
    assert len(pids) == 2, events
    for pid in pids:
        assert [event for who, event in events if who == pid] == [
            "before_upgrade", "on_ready", "before_shutdown", "after_shutdown",
        ]  # fmt: skip


def test_under_gapless_run_it_is_one_generation(tmp_path: Path) -> None:
    command = gapless_argv("serve", "serve_app:app", "--no-access-log")
    with running(tmp_path, command, env={**os.environ, "PYTHONPATH": str(APPS)}) as manager:
        pid = manager.status()["generations"][0]["pid"]
        connection = http.client.HTTPConnection("127.0.0.1", manager.port)
        connection.request("GET", "/")
        assert connection.getresponse().read() == f"pid {pid}".encode()
        connection.close()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["serve"], 2, 'missing MODULE:APP: give it, or app = "MODULE:APP" in [serve]'),
        (["serve", "a:b", "--workers", "0"], 2, "invalid count '0'"),
        (["serve", "a:b", "--interface", "cgi"], 2, "invalid choice: 'cgi'"),
        (["serve", "a:b", "--bind", "x:99999"], 2, "invalid bind 'x:99999'"),
        (["serve", "a:b", "--certfile", "c.pem"], 2, "give --certfile and --keyfile together"),
        (["serve", "a:b", "--app", "admin"], 2, "invalid --app 'admin': write NAME=MODULE:APP"),
        (["serve", "a:b", "--app", "admin=m:a"], 2, "--app 'admin=m:a' names no socket"),
        (
            ["serve", "a:b", "--certfile", "/nope.pem", "--keyfile", "/nope.pem"],
            1,
            "cannot read --certfile '/nope.pem'",
        ),
    ],
)
def test_misuse_is_one_line(args: Sequence[str], code: int, message: str) -> None:
    result = gapless(*args)
    assert result.returncode == code
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_an_app_that_cannot_load_fails_the_start_with_its_reason(tmp_path: Path) -> None:
    control = str(tmp_path / "control.sock")
    argv = gapless_argv(
        "serve", "serve_app:no_such_app", "--bind", "127.0.0.1:0", "--control", control
    )  # found (a missing module is refused before binding), but fails to load
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=APPS)
    assert result.returncode == 1
    assert re.search(r"start failed: generation 1 exited with code 3", result.stderr)
    assert "no attribute 'no_such_app' in 'serve_app:no_such_app'" in result.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_each_generation_reads_the_certificate_again(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    cert, key, trusts_old = self_signed(old)
    new_cert, new_key, trusts_new = self_signed(new)
    args = ("serve_app:app", "--certfile", str(cert), "--keyfile", str(key))
    with serving(tmp_path, *args) as manager:
        assert probe(https(manager.port, trusts_old)) is None
        shutil.copy(new_cert, cert)
        shutil.copy(new_key, key)
        reload(manager)
        assert probe(https(manager.port, trusts_new)) is None
        assert (probe(https(manager.port, trusts_old)) or "").startswith("tls:")


def https(port: int, context: ssl.SSLContext) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)


def test_an_admin_app_serves_its_own_bind_in_a_process_of_its_own(tmp_path: Path) -> None:
    binds = ("--bind", "web=127.0.0.1:0", "--bind", "admin=127.0.0.1:0")
    args = ("serve_app:app", *binds, "--app", "admin=serve_admin_app:app")
    with serving(tmp_path, *args) as manager:
        for generation in (1, 2):
            ports = [
                int(port) for port in re.findall(r"listening on 127\.0\.0\.1:(\d+)", manager.log())
            ]
            web, admin = (_get(port).split() for port in ports)
            assert web[0] == b"pid" and admin[0] == b"admin" and web[1] != admin[1]
            active = next(g for g in manager.status()["generations"] if g["state"] == "active")
            assert {int(web[1]), int(admin[1])} <= set(active["pids"]), generation
            if generation == 1:
                reload(manager)
                manager.wait_line(r"generation 1 \(pid \d+\) exited with code 0")


def _get(port: int) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/")
    body = connection.getresponse().read()
    connection.close()
    return body
