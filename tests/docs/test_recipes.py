"""The container recipes of docs/recipes are right as written: the Dockerfile (a
hadolint-style read of its instructions; no Docker daemon here), the Kubernetes
manifests and the Compose file (parsed with PyYAML; no kubelet here), checked
against the ``gapless run`` each one runs, as gapless's own parser reads it."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from recipe_files import (
    APP,
    DEPLOY,
    RECIPES,
    VENV_BIN,
    command,
    container,
    dockerfile,
    exec_form,
    gapless_args,
    load_yaml,
    recipe_files,
    shell_gapless_lines,
)

from gapless.cli_args import duration

MANIFESTS = ("k8s/deployment.yaml", "k8s/deployment-prestop.yaml")


def instructions(name: str) -> list[str]:
    return [arguments for word, arguments in dockerfile() if word == name]


def index(predicate: Any) -> int:
    return next(i for i, (word, arguments) in enumerate(dockerfile()) if predicate(word, arguments))


def image_cmd() -> list[str]:
    (cmd,) = instructions("CMD")
    return exec_form(cmd)


def pre_stop_sleep(app: dict[str, Any]) -> float:
    return float(app.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0))


def port_of(bind: Any) -> int:
    return int(str(bind.address).rpartition(":")[2])


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    users = [(i, arguments) for i, (word, arguments) in enumerate(dockerfile()) if word == "USER"]
    assert users, "no USER: the server would run as root"
    position, user = users[-1]
    uid = user.partition(":")[0]
    # Numeric, or Kubernetes' runAsNonRoot cannot check it.
    assert uid.isdigit() and int(uid) != 0, user
    assert position < index(lambda word, _: word == "CMD")


def test_the_dependency_layer_comes_before_the_code() -> None:
    code = index(lambda word, arguments: word == "COPY" and arguments.split()[0] == ".")
    requirements = index(lambda word, arguments: word == "COPY" and "requirements" in arguments)
    install = index(lambda word, arguments: word == "RUN" and "pip install" in arguments)
    assert requirements < install < code


def test_gapless_is_pid_1_and_no_entrypoint_nests_a_manager() -> None:
    # Kubernetes' command: replaces an ENTRYPOINT: with one of gapless it would not be
    # PID 1 under Docker, and a gapless command: would start a manager under a manager.
    assert instructions("ENTRYPOINT") == []
    for manifest in MANIFESTS:
        assert container(load_yaml(manifest))["command"][0] == VENV_BIN + "gapless"
    args = gapless_args(image_cmd())
    assert args.command == "run" and command(args)[0] == VENV_BIN + "gunicorn"


def test_the_healthcheck_asks_the_health_endpoint_and_both_ports_are_exposed() -> None:
    args = gapless_args(image_cmd())
    health = port_of(args.health_bind)
    (check,) = instructions("HEALTHCHECK")
    probe = exec_form(check.partition(" CMD ")[2])
    assert probe[0] == VENV_BIN + "python"  # no curl in a slim image
    assert f"http://127.0.0.1:{health}/ready" in probe[-1]
    exposed = {int(port) for each in instructions("EXPOSE") for port in each.split()}
    assert {health, *(port_of(bind) for bind in args.bind)} <= exposed
    assert instructions("STOPSIGNAL") == ["SIGTERM"]  # what gapless drains on


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_the_grace_period_outlasts_prestop_shutdown_delay_and_drain(manifest: str) -> None:
    spec = load_yaml(manifest)["spec"]["template"]["spec"]
    app = container(load_yaml(manifest))
    args = gapless_args(app["command"])
    pre_stop = pre_stop_sleep(app)
    needed = pre_stop + args.shutdown_delay + args.drain_timeout
    assert spec["terminationGracePeriodSeconds"] > needed
    # The doc's one statement of the rule carries this manifest's very numbers.
    numbers = (spec["terminationGracePeriodSeconds"], pre_stop, args.shutdown_delay)
    rule = "Grace {} > preStop {:g} + shutdown delay {:g} + drain timeout {:g}"
    assert rule.format(*numbers, args.drain_timeout) in (RECIPES / manifest).read_text()


def test_the_prestop_recipe_sleeps_natively_and_shows_the_exec_fallback() -> None:
    text = (RECIPES / "k8s/deployment-prestop.yaml").read_text()
    app = container(yaml.safe_load(text))
    native = app["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert "--shutdown-delay" not in app["command"]  # one delay, not two
    commented = re.search(r"^#   preStop:\n(#     .*\n)+", text, re.M)
    assert commented, "the exec fallback for clusters before 1.30 is gone"
    fallback = yaml.safe_load(re.sub(r"^# ", "", commented.group(0), flags=re.M))
    assert fallback["preStop"]["exec"]["command"] == ["sleep", str(native)]


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_the_probes_ask_ready_and_live_on_the_health_port(manifest: str) -> None:
    app = container(load_yaml(manifest))
    args = gapless_args(app["command"])
    health = port_of(args.health_bind)
    assert app["readinessProbe"]["httpGet"] == {"path": "/ready", "port": health}
    assert app["livenessProbe"]["httpGet"] == {"path": "/live", "port": health}
    ports = {each["containerPort"] for each in app["ports"]}
    assert {health, *(port_of(bind) for bind in args.bind)} <= ports
    assert app["image"].rpartition("/")[2].startswith(APP + ":")


def test_docker_stop_waits_longer_than_the_shutdown_delay_and_drain() -> None:
    service = load_yaml("compose.yaml")["services"][APP]
    args = gapless_args(image_cmd())
    grace = duration(service["stop_grace_period"])
    assert grace > args.shutdown_delay + args.drain_timeout


def test_every_recipe_runs_gapless_and_gunicorn_from_one_venv() -> None:
    runs = 0
    for path in recipe_files():
        text = path.read_text()
        for directory in re.findall(r"([\w./-]*/bin/)(?:gapless|gunicorn|python)(?![\w-])", text):
            assert directory == VENV_BIN, f"{path}: {directory}"
        for argv in shell_gapless_lines(text):
            assert argv[0] == VENV_BIN + "gapless", f"{path}: {argv}"
            runs += argv[1] == "run"
    assert runs >= 6  # the supervisors' and the units'


def test_gunicorn_runs_without_its_control_socket_and_readiness_waits_for_an_accept() -> None:
    # gunicorn's arbiter says READY=1 before a worker accepts: only auto (which then
    # waits for an accept) and accept are right for it. Two generations must not
    # share gunicorn 27's ~/.gunicorn/gunicorn.ctl.
    lines = [image_cmd()]
    lines += [container(load_yaml(manifest))["command"] for manifest in MANIFESTS]
    for path in recipe_files():
        lines += [argv for argv in shell_gapless_lines(path.read_text()) if argv[1] == "run"]
    for argv in lines:
        args = gapless_args(argv)
        assert args.ready.text in ("auto", "accept"), argv
        assert command(args)[:2] == [VENV_BIN + "gunicorn", "--no-control-socket"], argv


def test_copying_the_code_leaves_the_images_venv_alone() -> None:
    # The venv sits in the WORKDIR that COPY . . fills: a local .venv would replace it.
    assert "/opt/app" in instructions("WORKDIR") and VENV_BIN.startswith("/opt/app/.venv/")
    ignored = (RECIPES / ".dockerignore").read_text().split()
    assert ".venv" in ignored


def test_the_docs_timing_table_has_the_files_numbers() -> None:
    rows = re.findall(r"^\| `(\S+\.yaml)`[^|]*((?:\|[^|\n]*){5})\|$", DEPLOY.read_text(), re.M)
    assert {name for name, _ in rows} == {*MANIFESTS, "compose.yaml"}
    for name, cells in rows:
        numbers = [float(n) if n else 0.0 for n in re.findall(r"\|[^\d|]*(\d*)", cells)]
        pre_stop, delay, drain, total, grace = numbers
        if name == "compose.yaml":
            args = gapless_args(image_cmd())
            real = (0, args.shutdown_delay, args.drain_timeout)
            real_grace = duration(load_yaml(name)["services"][APP]["stop_grace_period"])
        else:
            app = container(load_yaml(name))
            args = gapless_args(app["command"])
            real = (pre_stop_sleep(app), args.shutdown_delay, args.drain_timeout)
            real_grace = load_yaml(name)["spec"]["template"]["spec"][
                "terminationGracePeriodSeconds"
            ]
        assert (pre_stop, delay, drain, grace) == (*real, real_grace), name
        assert total == sum(real) < grace, name
