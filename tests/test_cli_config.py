"""Settings of ``gapless run`` and ``gapless serve`` from ``GAPLESS_<OPTION>``,
Heroku's ``PORT`` and ``WEB_CONCURRENCY``, and a TOML config file, with
precedence command line > environment > file > default, shown by
``--print-config`` (issue 13, "Configuration the ecosystem expects")."""

from __future__ import annotations

import enum
import http.client
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from manager_harness import TIMEOUT, Manager, _kill_leftovers, gapless_argv, running
from serve_harness import APPS

from gapless.cli import CONFIGURED, build_parser
from gapless.settings import Layers, resolve, settings_of, shown, subcommands

#: The environment of every run: none of the caller's GAPLESS_ variables or platform ones.
CLEAN = {
    name: value
    for name, value in os.environ.items()
    if not name.startswith("GAPLESS_") and name not in ("PORT", "WEB_CONCURRENCY")
}


def _gapless(
    *args: str, env: dict[str, str] | None = None, cwd: Path = APPS
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gapless_argv(*args), capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd,
        env={**CLEAN, **(env or {})},
    )  # fmt: skip


def _settings(*args: str, **kwargs: Any) -> dict[str, tuple[str, str]]:
    """``gapless ARGS --print-config``: (value, source) by key; a key left unset
    has the value ``unset``."""
    result = _gapless(*args, "--print-config", **kwargs)
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        if match := re.fullmatch(r"(\w+) = (.*)  # (.*)", line):
            rows[match[1]] = (match[2], match[3])
        elif match := re.fullmatch(r"# (\w+) is unset  # (.*)", line):
            rows[match[1]] = ("unset", match[2])
    return rows


def _error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_print_config_shows_each_setting_its_value_and_source_and_starts_nothing(
    tmp_path: Path,
) -> None:
    rows = _settings("run", cwd=tmp_path)
    assert rows["drain_timeout"] == ("30.0", "default")
    assert rows["stop_signal"] == ('"SIGTERM"', "default")
    assert rows["control"] == ("unset", "default")
    assert rows["command"] == ("[]", "default")
    assert not list(tmp_path.iterdir())  # no control socket, no pid file


def test_precedence_is_command_line_then_environment_then_file_then_default(
    tmp_path: Path,
) -> None:
    config = tmp_path / "gapless.toml"
    config.write_text("[run]\ndrain_timeout = 1\nready_timeout = '2s'\nhandoff_timeout = 3\n")
    env = {"GAPLESS_DRAIN_TIMEOUT": "4", "GAPLESS_READY_TIMEOUT": "500ms"}
    rows = _settings("run", "--drain-timeout", "6", "--config", str(config), env=env)
    assert rows["drain_timeout"] == ("6.0", "cli")
    assert rows["ready_timeout"] == ("0.5", "env GAPLESS_READY_TIMEOUT")
    assert rows["handoff_timeout"] == ("3.0", f"file {config}")
    assert rows["shutdown_delay"] == ("0.0", "default")


def test_the_config_file_is_config_else_gapless_config_else_gapless_toml(tmp_path: Path) -> None:
    (tmp_path / "gapless.toml").write_text("[serve]\nworkers = 2\n")
    (tmp_path / "other.toml").write_text("[serve]\nworkers = 3\n")
    (tmp_path / "third.toml").write_text("[serve]\nworkers = 4\n")
    assert _settings("serve", cwd=tmp_path)["workers"] == ("2", "file gapless.toml")
    env = {"GAPLESS_CONFIG": "other.toml"}
    assert _settings("serve", cwd=tmp_path, env=env)["workers"] == ("3", "file other.toml")
    rows = _settings("serve", "--config", "third.toml", cwd=tmp_path, env=env)
    assert rows["workers"] == ("4", "file third.toml")


def test_lists_flags_and_commands_from_the_environment(tmp_path: Path) -> None:
    env = {
        "GAPLESS_BIND": "web=127.0.0.1:0, unix:/tmp/a b.sock",  # commas only
        "GAPLESS_HANDOFF": "yes",
        "GAPLESS_COMMAND": "python -m 'http.server' 0",
        "GAPLESS_STOP_SIGNAL": "int",
    }
    rows = _settings("run", env=env, cwd=tmp_path)
    assert rows["bind"] == ('["web=127.0.0.1:0", "unix:/tmp/a b.sock"]', "env GAPLESS_BIND")
    assert rows["handoff"] == ("true", "env GAPLESS_HANDOFF")
    assert rows["command"] == ('["python", "-m", "http.server", "0"]', "env GAPLESS_COMMAND")
    assert rows["stop_signal"] == ('"SIGINT"', "env GAPLESS_STOP_SIGNAL")
    rows = _settings("serve", env={"GAPLESS_NO_ACCESS_LOG": "TRUE"}, cwd=tmp_path)
    assert rows["no_access_log"] == ("true", "env GAPLESS_NO_ACCESS_LOG")


@pytest.mark.parametrize(
    ("command", "variable", "value", "message"),
    [
        ("run", "GAPLESS_DRAIN_TIMEOUT", "abc", "GAPLESS_DRAIN_TIMEOUT: invalid duration 'abc'"),
        ("run", "GAPLESS_LOG_FORMAT", "xml", "GAPLESS_LOG_FORMAT: invalid value 'xml': give one"),
        ("run", "GAPLESS_BIND", "x:99999", "GAPLESS_BIND: invalid bind 'x:99999'"),
        ("serve", "GAPLESS_FACTORY", "maybe", "GAPLESS_FACTORY: invalid value 'maybe': give 1, 0"),
        ("serve", "GAPLESS_WORKERS", "0", "GAPLESS_WORKERS: invalid count '0'"),
        ("serve", "GAPLESS_WORKRS", "2",
         "unknown variable GAPLESS_WORKRS; did you mean GAPLESS_WORKERS?"),
        ("serve", "WEB_CONCURRENCY", "many", "WEB_CONCURRENCY (for workers): invalid count 'many'"),
    ],
)  # fmt: skip
def test_a_bad_variable_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, command: str, variable: str, value: str, message: str
) -> None:
    for extra in ([], ["--print-config"]):  # refused before anything starts
        line = _error(_gapless(command, *extra, env={variable: value}, cwd=tmp_path))
        assert line.startswith(f"gapless {command}: error: {message}"), line


def test_another_subcommands_variable_is_no_error(tmp_path: Path) -> None:
    # A GAPLESS_ variable for serve reaches a `gapless run` above it, and the reverse.
    rows = _settings("run", env={"GAPLESS_WORKERS": "2"}, cwd=tmp_path)
    assert rows["drain_timeout"] == ("30.0", "default")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[serve]\ndrain_timout = 3\n",
         "unknown key 'drain_timout' in [serve] of {}; did you mean 'drain_timeout'?"),
        ("[serv]\nworkers = 3\n", "unknown table or key 'serv' in {}; did you mean [serve]?"),
        ("[serve]\nworkers = true\n",
         "workers in [serve] of {}: give a string or a number, not true"),
        ("[serve]\ndrain_timeout = 'soon'\n",
         "drain_timeout in [serve] of {}: invalid duration 'soon'"),
        ("[serve]\nfactory = 'yes'\n", "factory in [serve] of {}: give true or false, not \"yes\""),
        ("[serve]\nbind = 8000\n", "bind in [serve] of {}: give a list"),
        ("[serve]\ninterface = 'rsgi'\n",
         "interface in [serve] of {}: invalid value 'rsgi': give one of"),
        ("[serve\n", "config file '{}' is not valid TOML: "),
    ],
)  # fmt: skip
def test_a_bad_config_file_is_one_line_naming_the_key_and_exit_2(
    tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    line = _error(_gapless("serve", "serve_app:app", "--config", str(config), cwd=tmp_path))
    assert line.startswith("gapless serve: error: " + message.format(config)), line


def test_a_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    line = _error(_gapless("run", "--config", "nosuch.toml", "--", "true", cwd=tmp_path))
    assert line.startswith("gapless run: error: cannot read config file 'nosuch.toml'"), line


def test_port_binds_all_interfaces_unless_a_bind_is_given_anywhere(tmp_path: Path) -> None:
    port = {"PORT": "5000"}
    assert _settings("serve", env=port, cwd=tmp_path)["bind"] == (
        '["0.0.0.0:5000"]',
        "env PORT",
    )
    (tmp_path / "gapless.toml").write_text("[serve]\nbind = ['127.0.0.1:7000']\n")
    rows = _settings("serve", env=port, cwd=tmp_path)
    assert rows["bind"] == ('["127.0.0.1:7000"]', "file gapless.toml")
    rows = _settings("serve", "--bind", "127.0.0.1:7001", env=port, cwd=tmp_path)
    assert rows["bind"] == ('["127.0.0.1:7001"]', "cli")
    assert _settings("run", env=port, cwd=tmp_path)["bind"] == ("[]", "default")  # serve only


def test_web_concurrency_sets_workers_above_the_file_below_gapless_workers(
    tmp_path: Path,
) -> None:
    (tmp_path / "gapless.toml").write_text("[serve]\nworkers = 2\n")
    env = {"WEB_CONCURRENCY": "3"}
    assert _settings("serve", env=env, cwd=tmp_path)["workers"] == ("3", "env WEB_CONCURRENCY")
    env["GAPLESS_WORKERS"] = "4"
    assert _settings("serve", env=env, cwd=tmp_path)["workers"] == ("4", "env GAPLESS_WORKERS")


@pytest.mark.parametrize("command", sorted(CONFIGURED))
def test_every_option_is_a_key_and_the_printed_config_reads_back(
    tmp_path: Path, command: str
) -> None:
    parser = subcommands(build_parser())[command]
    env = {"GAPLESS_DRAIN_TIMEOUT": "2m", "GAPLESS_HANDOFF": "1", "GAPLESS_LOG_FORMAT": "json"}
    result = _gapless(command, "--print-config", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = _settings(command, env=env, cwd=tmp_path)
    options = {flag for action in parser._actions for flag in action.option_strings}
    options -= {"-h", "--help", "--config", "--print-config"}
    keys = {s.key for s in settings_of(parser) if s.action.option_strings}
    assert {f"--{key.replace('_', '-')}" for key in keys} | {"--app"} >= options
    assert set(rows) == {s.key for s in settings_of(parser)}
    # The output is a config file giving the same settings.
    (tmp_path / "printed.toml").write_text(result.stdout)
    again = _settings(command, "--config", "printed.toml", cwd=tmp_path)
    assert {key: value for key, (value, _) in again.items()} == {
        key: value for key, (value, _) in rows.items()
    }
    assert again["drain_timeout"] == ("120.0", "file printed.toml")


#: A value for each setting whose default is unset or empty, to give it from a variable.
SAMPLES = {
    "bind": "web=127.0.0.1:0,unix:/tmp/gapless-sample.sock",
    "control": "/tmp/control.sock",
    "pid_file": "/tmp/gapless.pid",
    "handoff": "/tmp/handoff.sock",
    "health_bind": "127.0.0.1:0",
    "command": "python -m http.server",
    "app": "serve_app:app",
    "hooks": "hooks_module",
    "app_by_name": "admin=admin:app",
    "read_timeout": "3s",
    "limit_concurrency": "4",
    "certfile": "cert.pem",
    "keyfile": "key.pem",
    "before_reload": "nginx -t",
    "on_ready": "echo ready",
    "on_reload_failed": "echo failed",
}


@pytest.mark.parametrize("command", sorted(CONFIGURED))
def test_every_setting_comes_from_its_variable_as_from_its_option(command: str) -> None:
    """Generic: an option added later is covered, or this names it (add a sample)."""
    parser = build_parser()
    sub = subcommands(parser)[command]
    unknown = {setting.key: "" for setting in settings_of(sub)}
    defaults = shown(sub, parser.parse_args([command]), unknown)
    for setting in settings_of(sub):
        value = defaults.get(setting.key, (None, ""))[0]
        if setting.key in SAMPLES:
            text = SAMPLES[setting.key]
        else:
            assert value not in (None, []), f"add a sample value of {setting.key} to SAMPLES"
            text = value.name if isinstance(value, enum.Enum) else str(value)
            text = text.lower() if isinstance(value, bool) else text
        args = parser.parse_args([command])
        environ = {setting.variable: text}
        sources = resolve(Layers(parser=sub, argv=[], environ=environ), args)
        assert sources[setting.key] == f"env {setting.variable}"
        expected = parser.parse_args([command, *_argv(setting, text)])
        dest = setting.action.dest
        assert getattr(args, dest) == getattr(expected, dest), setting.key


def _argv(setting: Any, text: str) -> list[str]:
    """The command line giving ``setting`` the value ``text`` has in a variable."""
    flag = setting.action.option_strings[-1] if setting.action.option_strings else None
    if flag is None:
        return shlex.split(text) if setting.many else [text]
    if setting.flag:
        return [flag] if text in ("true", "1") else []
    if setting.many:
        return [part for item in text.split(",") for part in (flag, item)]
    return [f"{flag}={text}"]


def test_serve_started_from_a_config_file_alone(tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    config = tmp_path / "serve.toml"
    config.write_text(
        "[serve]\n"
        'app = "serve_app:app"\n'
        'bind = ["127.0.0.1:0"]\n'
        f"control = {str(control)!r}\n"
        "no_access_log = true\n"
        'drain_timeout = "5s"\n'
    )
    process = subprocess.Popen(
        gapless_argv("serve", "--config", str(config)),
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=APPS, env=CLEAN,
    )  # fmt: skip
    manager = Manager(process, str(control))
    manager.start_reader()
    try:
        manager.wait_line(r"generation 1 ready after")
        connection = http.client.HTTPConnection("127.0.0.1", manager.port, timeout=TIMEOUT)
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200
        assert response.read().startswith(b"pid ")
        connection.close()
        process.send_signal(signal.SIGTERM)
        assert manager.wait() == 0, manager.log()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
        _kill_leftovers(manager)


def test_serve_under_run_serves_the_inherited_sockets_despite_gapless_bind(
    tmp_path: Path,
) -> None:
    # GAPLESS_BIND binds the outer gapless run, and reaches the gapless serve it runs.
    python_path = os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")])
    env = {**CLEAN, "GAPLESS_BIND": "127.0.0.1:0", "PYTHONPATH": python_path}
    serve = gapless_argv("serve", "serve_app:app", "--no-access-log")
    with running(tmp_path, serve, binds=(), env=env) as manager:
        connection = http.client.HTTPConnection("127.0.0.1", manager.port, timeout=TIMEOUT)
        connection.request("GET", "/")
        assert connection.getresponse().status == 200
        connection.close()
        manager.signal(signal.SIGTERM)
        assert manager.wait() == 0, manager.log()


def test_serve_under_run_still_refuses_a_bind_on_its_command_line(tmp_path: Path) -> None:
    python_path = os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")])
    env = {**CLEAN, "PYTHONPATH": python_path}
    serve = gapless_argv("serve", "serve_app:app", "--bind", "127.0.0.1:0")
    with running(tmp_path, serve, binds=("127.0.0.1:0",), env=env, ready_line=None) as manager:
        manager.wait_line(r"--bind given but sockets were inherited \(LISTEN_FDS\): drop --bind")


def test_the_printed_command_leaves_out_the_separator(tmp_path: Path) -> None:
    result = _gapless("run", "--print-config", "--", "python", "-m", "app", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'command = ["python", "-m", "app"]  # cli' in result.stdout.splitlines()
