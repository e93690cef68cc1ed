"""The runner's profiles: it announces SERVING only when nginx's address and every gateway
behind it report it (nginx answers SERVING as soon as one gateway does), and it places the
processes on the configured ports."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.config import MAX_PROCESSES, ConfigError, available_cores, load_settings
from infra.local import profiles, runner
from infra.local.ports import ensure_port_free
from infra.local.supervision import ProcessSpec
from tests.infra.tooling import run, system_tool


class _HealthServer:
    """A real gRPC server with only the health service, on a free port."""

    def __init__(self) -> None:
        self.servicer = health.HealthServicer()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self.set(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.start()

    def set(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        self.servicer.set("", status)


@pytest.fixture
def servers() -> Iterator[list[_HealthServer]]:
    started = [_HealthServer() for _ in range(3)]
    yield started
    for server in started:
        server.server.stop(grace=None)


def test_waits_for_every_backend_before_announcing(
    servers: list[_HealthServer], capsys: pytest.CaptureFixture[str]
) -> None:
    front, first, second = servers
    front.set(health_pb2.HealthCheckResponse.SERVING)
    first.set(health_pb2.HealthCheckResponse.SERVING)
    stopped = threading.Event()
    backends = [first.address, second.address]
    announcer = threading.Thread(
        target=runner._announce, args=(front.address, backends, None, stopped)
    )
    announcer.start()
    try:
        time.sleep(1.5)  # several polls: the front and one backend say SERVING, one does not
        assert announcer.is_alive()
        assert "is SERVING" not in capsys.readouterr().out
        second.set(health_pb2.HealthCheckResponse.SERVING)
        announcer.join(timeout=10)
        assert not announcer.is_alive()
        out = capsys.readouterr().out
        assert f"recsys is SERVING on {front.address}" in out
        assert "popularity ranking" in out  # no Triton in this profile
    finally:
        stopped.set()
        announcer.join(timeout=10)


def test_names_the_backend_that_never_came_up(
    servers: list[_HealthServer],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    front, first, second = servers
    front.set(health_pb2.HealthCheckResponse.SERVING)
    first.set(health_pb2.HealthCheckResponse.SERVING)
    monkeypatch.setattr(runner, "READY_TIMEOUT_S", 2.0)
    runner._announce(front.address, [first.address, second.address], None, threading.Event())
    out = capsys.readouterr().out
    assert f"did not report SERVING on {second.address}" in out
    assert "is SERVING" not in out


def test_stack_gateway_ports_follow_nginx_port() -> None:
    settings = load_settings(profiles.REPO / "infra" / "config" / "stack.yaml", {})
    ports = profiles.stack_gateway_ports(settings)
    assert len(ports) == settings.serving.processes
    assert ports == list(range(settings.serving.port + 1, settings.serving.port + 1 + len(ports)))


def test_triton_ports_follow_the_gateways_triton_url() -> None:
    local = profiles.REPO / "infra" / "config" / "local.yaml"
    default = profiles.triton_ports(load_settings(local, {}))
    assert (default.http, default.grpc, default.metrics) == (8000, 8001, 8002)
    moved = load_settings(local, {"RECSYS__MODEL__RANKER__TRITON_GRPC_URL": "127.0.0.1:18001"})
    ports = profiles.triton_ports(moved)
    assert (ports.http, ports.grpc, ports.metrics) == (18000, 18001, 18002)
    spec = profiles._triton(moved)
    if spec:  # the local repository is built
        argv = spec["triton"].argv
        for flag, value in (
            ("--http-port", 18000),
            ("--grpc-port", 18001),
            ("--metrics-port", 18002),
        ):
            assert argv[argv.index(flag) + 1] == str(value)


def test_triton_serves_http_where_the_gateway_sends_its_inference_calls() -> None:
    settings = load_settings(
        profiles.REPO / "infra" / "config" / "local.yaml",
        {"RECSYS__MODEL__RANKER__TRITON_HTTP_URL": "127.0.0.1:18500"},
    )
    ports = profiles.triton_ports(settings)
    assert (ports.http, ports.grpc, ports.metrics) == (18500, 8001, 8002)
    assert settings.model.ranker.inference_http_url() == "127.0.0.1:18500"


@pytest.mark.parametrize("url", ["127.0.0.1:notaport", "127.0.0.1:1", "127.0.0.1:65535"])
def test_a_triton_url_without_room_for_three_ports_is_a_config_error(url: str) -> None:
    def ports() -> profiles.TritonPorts:
        # Without a port below it there is no HTTP port to derive: loading the settings says so.
        settings = load_settings(
            profiles.REPO / "infra" / "config" / "local.yaml",
            {"RECSYS__MODEL__RANKER__TRITON_GRPC_URL": url},
        )
        return profiles.triton_ports(settings)

    with pytest.raises(ConfigError, match="triton_grpc_url"):
        ports()


def _scrape_targets(config: dict[str, Any]) -> dict[str, list[str]]:
    return {
        job["job_name"]: [t for group in job["static_configs"] for t in group["targets"]]
        for job in config["scrape_configs"]
    }


def test_stack_prometheus_scrapes_the_ports_the_stack_uses(tmp_path: Path) -> None:
    settings = load_settings(
        profiles.REPO / "infra" / "config" / "stack.yaml",
        {
            "RECSYS__SERVING__PROCESSES": "3",
            "RECSYS__MONITORING__METRICS__PORT": "19464",
            "RECSYS__MODEL__REPOSITORY_DIR": str(tmp_path / "no-models"),
        },
    )
    config = profiles.stack_prometheus_config(settings, 19090)
    assert _scrape_targets(config) == {
        "recsys-gateway": ["127.0.0.1:19465", "127.0.0.1:19466", "127.0.0.1:19467"],
        "recsys-ab-sidecar": ["127.0.0.1:19468"],
        "prometheus": ["127.0.0.1:19090"],
    }
    # Prometheus itself accepts it, rules included (absolute paths, from any folder).
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run([system_tool("promtool"), "check", "config", path], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule files found" in result.stdout


def test_stack_prometheus_scrapes_triton_where_it_listens(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    repository.mkdir()
    settings = load_settings(
        profiles.REPO / "infra" / "config" / "stack.yaml",
        {
            "RECSYS__MODEL__REPOSITORY_DIR": str(repository),
            "RECSYS__MODEL__RANKER__TRITON_GRPC_URL": "127.0.0.1:18001",
        },
    )
    targets = _scrape_targets(profiles.stack_prometheus_config(settings, 9090))
    assert targets["triton"] == ["127.0.0.1:18002"]


LOCAL = profiles.REPO / "infra" / "config" / "local.yaml"


def test_make_run_starts_one_gateway_per_core_by_default(tmp_path: Path) -> None:
    settings = load_settings(LOCAL, {"RECSYS__MODEL__REPOSITORY_DIR": str(tmp_path / "none")})
    assert settings.serving.processes == min(available_cores(), MAX_PROCESSES)
    gateways = [n for n in profiles.local_processes(settings, LOCAL) if n.startswith("gateway")]
    assert len(gateways) == settings.serving.processes


def test_make_run_gateways_share_the_port_with_metrics_after_the_metrics_port(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        LOCAL,
        {
            "RECSYS__SERVING__PROCESSES": "3",
            "RECSYS__MONITORING__METRICS__PORT": "19464",
            "RECSYS__MODEL__REPOSITORY_DIR": str(tmp_path / "none"),
        },
    )
    processes = profiles.local_processes(settings, LOCAL)
    assert list(processes) == ["gateway1", "gateway2", "gateway3", "sidecar"]
    assert [p.env for p in processes.values()][:3] == [
        {"RECSYS__SERVING__REUSE_PORT": "true", "RECSYS__MONITORING__METRICS__PORT": str(port)}
        for port in (19465, 19466, 19467)
    ]
    # the experiment sidecar decides on the embedded store; its metrics after the gateways'
    assert processes["sidecar"] == ProcessSpec(
        [sys.executable, "-m", "ab", "sidecar", "--config", str(LOCAL)],
        {
            "RECSYS__AB_TESTING__CONTROLLER__METRICS_HOST": "127.0.0.1",
            "RECSYS__AB_TESTING__CONTROLLER__METRICS_PORT": "19468",
        },
    )
    # The gRPC port is not overridden: all bind `serving.port`; the layout is the stack's.
    assert profiles.local_metrics_ports(settings) == profiles.stack_metrics_ports(settings)
    free = load_settings(
        LOCAL, {"RECSYS__SERVING__PROCESSES": "2", "RECSYS__MONITORING__METRICS__PORT": "0"}
    )
    assert profiles.local_metrics_ports(free) == [0, 0]  # a free port each


def test_a_single_make_run_gateway_keeps_its_ports_and_an_exclusive_bind(tmp_path: Path) -> None:
    settings = load_settings(
        LOCAL,
        {"RECSYS__SERVING__PROCESSES": "1", "RECSYS__MODEL__REPOSITORY_DIR": str(tmp_path / "no")},
    )
    processes = profiles.local_processes(settings, LOCAL)
    assert processes["gateway"] == ProcessSpec(profiles._gateway(LOCAL))
    assert list(processes) == ["gateway", "sidecar"]
    port = processes["sidecar"].env["RECSYS__AB_TESTING__CONTROLLER__METRICS_PORT"]
    assert port == str(settings.monitoring.metrics.port + 2)  # 9464: gateway, 9466: sidecar
    no_experiments = settings.model_copy(
        update={"ab_testing": settings.ab_testing.model_copy(update={"experiments": ()})}
    )
    assert list(profiles.local_processes(no_experiments, LOCAL)) == ["gateway"]
    assert profiles.local_metrics_ports(settings) == [settings.monitoring.metrics.port]
    assert not settings.serving.reuse_port


def test_several_make_run_gateways_need_a_fixed_port() -> None:
    settings = load_settings(
        LOCAL, {"RECSYS__SERVING__PROCESSES": "2", "RECSYS__SERVING__PORT": "0"}
    )
    with pytest.raises(ConfigError, match="serving.port"):
        profiles.local_processes(settings, LOCAL)


def _listener(reuse_port: bool) -> socket.socket:
    sock = socket.socket()
    if reuse_port:  # as a gateway of an earlier multi-process `make run` binds
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize("reuse_port", [False, True])
def test_make_run_refuses_a_port_that_is_still_held(
    reuse_port: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with _listener(reuse_port) as held:
        port = held.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            ensure_port_free("127.0.0.1", port)
        monkeypatch.setenv("RECSYS__SERVING__PORT", str(port))
        monkeypatch.setenv("RECSYS__SERVING__PROCESSES", "2")
        with pytest.raises(SystemExit, match=f"127.0.0.1:{port} is taken"):
            runner.main(["--config", str(LOCAL)])
    ensure_port_free("127.0.0.1", port)  # released: free again
