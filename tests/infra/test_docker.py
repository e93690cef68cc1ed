"""Dockerfiles and the compose stack, checked statically (no Docker engine on these machines)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.tooling import INFRA, REPO_ROOT, require_tool, run

DOCKER = INFRA / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
COMPOSE = DOCKER / "docker-compose.yml"
CONFIG = "/etc/recsys/config.yaml"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = dockerfile.read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    result = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage (each starts at a FROM)."""
    groups: list[list[tuple[str, str]]] = []
    for instruction in instructions(dockerfile):
        if instruction[0] == "FROM":
            groups.append([])
        if groups:
            groups[-1].append(instruction)
    return groups


def resolve_args(dockerfile: Path, image: str) -> str:
    """Replace ${ARG} with the default of a global ARG."""
    defaults = {}
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name] = value
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)


def test_dockerfiles_exist() -> None:
    assert {p.name for p in DOCKERFILES} >= {"gateway.Dockerfile", "triton.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    result = run([require_tool("hadolint"), "--no-color", dockerfile])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    stage_names = set()
    for keyword, rest in steps:
        if keyword == "FROM":
            words = rest.split()
            image = resolve_args(dockerfile, words[0])
            if image not in stage_names:
                # Base images are pinned by tag (or digest), never latest or untagged.
                assert re.search(r"(:[\w][\w.-]*|@sha256:[0-9a-f]{64})$", image), image
                assert not image.endswith(":latest"), image
            if len(words) == 3 and words[1].upper() == "AS":
                stage_names.add(words[2])
        if keyword == "ADD":
            assert "http://" not in rest
            assert "https://" not in rest
    # The final stage runs as a non-root user.
    users = [rest for keyword, rest in stages(dockerfile)[-1] if keyword == "USER"]
    assert users, "final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    # Its own .dockerignore keeps the repository-root build context small.
    assert dockerfile.with_name(dockerfile.name + ".dockerignore").is_file()


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list)
    return [str(v) for v in value]


def test_gateway_image() -> None:
    dockerfile = DOCKER / "gateway.Dockerfile"
    steps = instructions(dockerfile)
    runs = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    assert "uv sync --frozen --no-dev --no-install-project" in runs
    assert "uv sync --frozen --no-dev --no-editable" in runs
    final = stages(dockerfile)[-1]
    assert resolve_args(dockerfile, final[0][1].split()[0]).startswith("python:3.11")
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]  # only the venv (with the code)
    cmd = exec_form(next(rest for keyword, rest in final if keyword == "CMD"))
    assert cmd == ["recsys-gateway", "--config", CONFIG]
    assert next(rest for keyword, rest in final if keyword == "USER") == "10001:10001"


def test_triton_image() -> None:
    dockerfile = DOCKER / "triton.Dockerfile"
    server = stages(dockerfile)[-1]
    image = resolve_args(dockerfile, server[0][1].split()[0])
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", image)
    models = stages(dockerfile)[0]
    assert ("COPY", "build/triton/production/ /models/") in models
    cmd = exec_form(next(rest for keyword, rest in server if keyword == "CMD"))
    assert cmd[0] == "tritonserver"
    assert "--model-repository=/models" in cmd


def test_dockerignore_keeps_what_the_gateway_build_copies() -> None:
    ignore = (DOCKER / "gateway.Dockerfile.dockerignore").read_text(encoding="utf-8")
    for keyword, rest in instructions(DOCKER / "gateway.Dockerfile"):
        if keyword == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert f"!{source}" in ignore, source
                assert (REPO_ROOT / source).exists(), source


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def test_compose_file_is_valid_compose_spec() -> None:
    """compose-go (the library behind `docker compose`) loads, validates and normalises it."""
    tool = require_tool("compose-spec")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    result = run([tool, "--format", "json", COMPOSE.name], cwd=DOCKER, env=env)
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    assert set(model["services"]) == set(compose()["services"])
    build = model["services"]["gateway"]["build"]
    assert Path(build["context"]) == REPO_ROOT  # paths resolve from the compose file


def test_compose_spec_rejects_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text('services:\n  x:\n    image: a\n    comand: ["x"]\n', encoding="utf-8")
    result = run([require_tool("compose-spec"), bad.name], cwd=tmp_path)
    assert result.returncode != 0
    assert "services.x.comand" in result.stderr


def test_compose_services_and_commands() -> None:
    services = compose()["services"]
    assert set(services) == {
        "gateway",
        "ab-sidecar",
        "triton",
        "redis",
        "postgres",
        "nginx",
        "prometheus",
    }
    assert services["gateway"]["command"] == ["recsys-gateway", "--config", CONFIG]
    assert services["ab-sidecar"]["command"] == [
        "python",
        "-m",
        "ab",
        "sidecar",
        "--config",
        CONFIG,
    ]
    assert services["triton"]["command"][0] == "tritonserver"
    assert "--model-repository=/models" in services["triton"]["command"]
    # One configuration file, the production profile, for both processes.
    for name in ("gateway", "ab-sidecar"):
        mounts = services[name]["volumes"]
        assert f"../config/production.yaml:{CONFIG}:ro" in mounts
    assert (REPO_ROOT / "infra" / "config" / "production.yaml").is_file()
    assert services["gateway"]["read_only"] is True


def test_compose_nginx_uses_the_shared_template() -> None:
    nginx = compose()["services"]["nginx"]
    assert (
        "../nginx/nginx.conf.template:/etc/nginx/templates/nginx.conf.template:ro"
        in (nginx["volumes"])
    )
    env = nginx["environment"]
    template = (INFRA / "nginx" / "nginx.conf.template").read_text(encoding="utf-8")
    body = template.split("worker_processes", 1)[1]
    placeholders = {part.split("}", 1)[0] for part in body.split("${")[1:]}
    assert placeholders <= set(env)
    assert "server gateway:50051" in env["NGINX_UPSTREAM_SERVERS"]
    prefix_script = DOCKER / "compose" / "nginx-prefix.sh"
    assert os.access(prefix_script, os.X_OK)


def test_compose_prometheus_scrapes_every_metrics_port() -> None:
    config = yaml.safe_load((DOCKER / "compose" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    }
    assert targets == {"gateway:9464", "ab-sidecar:9465", "triton:8002"}
