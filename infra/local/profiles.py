"""What `make run` (`local_processes`) and `make stack` (`stack_processes`) run: one
supervised process spec per program, and the ports each profile puts them on. The runner
(infra/local/runner.py) hands these to supervisord; its help describes both profiles.
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.config import ConfigError, Settings
from infra.local.store_servers import POSTGRES_BIN
from infra.local.supervision import ProcessSpec
from infra.local.tritonserver import DEFAULT_GRPC_PORT

REPO = Path(__file__).resolve().parents[2]
NGINX_RENDER = REPO / "infra" / "nginx" / "render-config"
PROMETHEUS_CONFIG = REPO / "infra" / "prometheus" / "prometheus.yml"


@dataclass(frozen=True)
class TritonPorts:
    """The local Triton's three endpoints."""

    http: int
    grpc: int
    metrics: int


def triton_ports(settings: Settings) -> TritonPorts:
    """gRPC where `model.ranker.triton_grpc_url` points, HTTP just below it (or where
    `model.ranker.triton_http_url` points) and metrics just above (8000, 8001, 8002 by
    default): one setting moves all three, e.g. away from another server on 8000.

    Raises:
        ConfigError: the URL has no valid port.
    """
    url = settings.model.ranker.triton_grpc_url
    try:
        port = urlsplit(f"//{url}").port or DEFAULT_GRPC_PORT
    except ValueError:
        port = 0
    if not 1 < port < 65535:
        raise ConfigError(f"model.ranker.triton_grpc_url: {url!r} has no valid host:port")
    # HTTP where the gateway sends its inference calls: `triton_http_url` when set, else
    # the port below gRPC's, as `RankerSettings.triton_http_url` derives it.
    http = settings.model.ranker.triton_http_port() or port - 1
    return TritonPorts(http=http, grpc=port, metrics=port + 1)


def _triton(settings: Settings) -> dict[str, ProcessSpec]:
    model = settings.model
    repository = model.repository_dir or model.artifacts_dir / "triton" / "local"
    if not repository.is_dir():
        return {}
    ports = triton_ports(settings)
    # Poll mode: a new model version dropped into the repository is loaded without a restart,
    # and the gateway's model registry routes to it once Triton reports it READY.
    argv = [
        sys.executable,
        "-m",
        "infra.local.tritonserver",
        "--model-repository",
        str(repository),
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        "5",
        "--http-port",
        str(ports.http),
        "--grpc-port",
        str(ports.grpc),
        "--metrics-port",
        str(ports.metrics),
    ]
    return {"triton": ProcessSpec(argv)}


def _gateway(config: Path) -> list[str]:
    return [sys.executable, "-m", "gateway.main", "--config", str(config)]


def local_processes(settings: Settings, config: Path) -> dict[str, ProcessSpec]:
    """The `make run` profile: Triton (when built), `serving.processes` gateways sharing
    `serving.port` (SO_REUSEPORT when more than one), each with its own metrics port, and the
    experiment sidecar.

    Raises:
        ConfigError: several processes but no fixed `serving.port` to share.
    """
    processes = dict(_triton(settings))
    count = settings.serving.processes
    if count == 1:
        processes["gateway"] = ProcessSpec(_gateway(config))
        return processes | _local_sidecar(settings, config)
    if settings.serving.port == 0:
        raise ConfigError(
            f"serving.port: 0 (a free port each) cannot be shared by serving.processes={count}"
            " gateways; set a port, or serving.processes: 1"
        )
    for i, metrics_port in enumerate(local_metrics_ports(settings)):
        processes[f"gateway{i + 1}"] = ProcessSpec(
            _gateway(config),
            {
                "RECSYS__SERVING__REUSE_PORT": "true",
                "RECSYS__MONITORING__METRICS__PORT": str(metrics_port),
            },
        )
    return processes | _local_sidecar(settings, config)


def _local_sidecar(settings: Settings, config: Path) -> dict[str, ProcessSpec]:
    """`make run`'s experiment controller, when experiments are configured: on the embedded
    store it reads the gateways' SQLite exposure and event logs and writes the JSON state
    their routing follows (ab/backends.py). Its metrics go on the port after the last
    gateway's, as in the stack (a free one when the gateways' base port is 0)."""
    if not settings.ab_testing.experiments:
        return {}
    metrics = settings.monitoring.metrics
    port = stack_sidecar_metrics_port(settings) if metrics.port else 0
    argv = [sys.executable, "-m", "ab", "sidecar", "--config", str(config)]
    env = {
        "RECSYS__AB_TESTING__CONTROLLER__METRICS_HOST": metrics.host,
        "RECSYS__AB_TESTING__CONTROLLER__METRICS_PORT": str(port),
    }
    return {"sidecar": ProcessSpec(argv, env)}


def local_metrics_ports(settings: Settings) -> list[int]:
    """`make run`'s gateway metrics ports: `monitoring.metrics.port` for a single gateway;
    for several, the stack's layout (the ports after it), or a free port each when it is 0."""
    base = settings.monitoring.metrics.port
    if settings.serving.processes == 1:
        return [base]
    if base == 0:
        return [0] * settings.serving.processes
    return stack_metrics_ports(settings)


def _as_postgres_user(argv: list[str]) -> list[str]:
    """Postgres refuses to run as root: drop to the `postgres` system user (setpriv execs the
    server directly, so supervisord signals Postgres itself)."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]


def prepare_postgres(data_dir: Path, user: str, database: str) -> None:
    """Creates the stack's Postgres cluster and database once (idempotent)."""
    if (data_dir / "PG_VERSION").is_file():
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    subprocess.run(
        _as_postgres_user(
            [
                str(POSTGRES_BIN / "initdb"),
                "--pgdata",
                str(data_dir),
                "--username",
                user,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
            ]
        ),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        _as_postgres_user(
            [str(POSTGRES_BIN / "postgres"), "--single", "-D", str(data_dir), "postgres"]
        ),
        input=f'CREATE DATABASE "{database}";\n'.encode(),
        check=True,
        capture_output=True,
    )


def stack_gateway_ports(settings: Settings) -> list[int]:
    """The stack's gateway ports, the ones after nginx's `serving.port`."""
    return [settings.serving.port + 1 + i for i in range(settings.serving.processes)]


def stack_metrics_ports(settings: Settings) -> list[int]:
    """The gateway metrics ports, the ones after `monitoring.metrics.port`: the stack's, and
    `make run`'s when it runs several gateways."""
    base = settings.monitoring.metrics.port
    return [base + 1 + i for i in range(settings.serving.processes)]


def stack_sidecar_metrics_port(settings: Settings) -> int:
    """The experiment sidecar's metrics port, the one after the last gateway's."""
    return settings.monitoring.metrics.port + 1 + settings.serving.processes


def stack_prometheus_config(settings: Settings, prometheus_port: int) -> dict[str, Any]:
    """Prometheus' configuration for this stack: the rules and alerting of
    infra/prometheus/prometheus.yml, with scrape targets on the ports this stack really uses
    (gateways, the sidecar, Triton when built), so moved ports or more processes are still
    scraped."""
    static = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs: dict[str, list[int]] = {"recsys-gateway": stack_metrics_ports(settings)}
    if settings.feature_store.backend == "redis_postgres":
        jobs["recsys-ab-sidecar"] = [stack_sidecar_metrics_port(settings)]
    if _triton(settings):
        jobs["triton"] = [triton_ports(settings).metrics]
    jobs["prometheus"] = [prometheus_port]
    return {
        "global": static["global"],
        # Absolute, since the generated file lives in the run folder.
        "rule_files": [str(PROMETHEUS_CONFIG.parent / pattern) for pattern in static["rule_files"]],
        "alerting": static["alerting"],
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{port}" for port in ports],
                        "labels": {"profile": "stack"},
                    }
                ],
            }
            for job, ports in jobs.items()
        ],
    }


def stack_processes(
    settings: Settings, config: Path, run_dir: Path, prometheus_port: int = 9090
) -> dict[str, ProcessSpec]:
    """The `make stack` profile: nginx in front of `serving.processes` gateways, Redis,
    Postgres, Prometheus and (when built) Triton. Writes nginx's configuration and the data
    folders under `run_dir`; Redis and Postgres listen where `feature_store` points.
    """
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "tmp").mkdir(exist_ok=True)
    processes = dict(_triton(settings))
    processes["nginx"] = _stack_nginx(settings, run_dir)
    with_stores = settings.feature_store.backend == "redis_postgres"
    if with_stores:
        processes |= _stack_stores(settings, run_dir)
    processes["prometheus"] = _stack_prometheus(settings, run_dir, prometheus_port)
    # Gateways and the sidecar open the store at start-up, so they wait for Postgres first.
    wait = _wait_for_postgres(settings) if with_stores else ""
    if with_stores:
        processes["sidecar"] = _stack_sidecar(settings, config, wait)
    return processes | _stack_gateways(settings, config, run_dir, wait)


def _stack_nginx(settings: Settings, run_dir: Path) -> ProcessSpec:
    """nginx on `serving.port`, load-balancing over the stack's gateway ports (its
    configuration rendered into `run_dir` by infra/nginx/render-config)."""
    serving = settings.serving
    subprocess.run(
        [
            str(NGINX_RENDER),
            "--gateways",
            str(serving.processes),
            "--host",
            "127.0.0.1",
            "--base-port",
            str(stack_gateway_ports(settings)[0]),
            "--listen",
            f"{serving.host}:{serving.port}",
            "--error-log",
            "/dev/stderr",
            "--access-log",
            "logs/access.log",
            "--workers",
            "1",
            "--output",
            str(run_dir / "nginx.conf"),
        ],
        check=True,
    )
    return ProcessSpec(
        ["nginx", "-p", str(run_dir), "-c", str(run_dir / "nginx.conf"), "-g", "daemon off;"]
    )


def _stack_stores(settings: Settings, run_dir: Path) -> dict[str, ProcessSpec]:
    """Redis (append-only file) and Postgres (cluster created once) where `feature_store`
    points, their data under `run_dir`."""
    store = settings.feature_store
    redis = urlsplit(store.redis.url)
    postgres = urlsplit(store.postgres.dsn)
    (run_dir / "redis").mkdir(exist_ok=True)
    pg_data = run_dir / "postgres"
    prepare_postgres(pg_data, postgres.username or "recsys", postgres.path.lstrip("/") or "recsys")
    return {
        "redis": ProcessSpec(
            [
                "redis-server",
                "--port",
                str(redis.port or 6379),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(run_dir / "redis"),
                "--appendonly",
                "yes",
            ]
        ),
        "postgres": ProcessSpec(
            _as_postgres_user(
                [
                    str(POSTGRES_BIN / "postgres"),
                    "-D",
                    str(pg_data),
                    "-p",
                    str(postgres.port or 5432),
                    "-k",
                    str(pg_data),
                    "-c",
                    "listen_addresses=127.0.0.1",
                ]
            )
        ),
    }


def _wait_for_postgres(settings: Settings) -> str:
    """A shell prefix that waits until the stack's Postgres accepts connections, then execs."""
    pg_port = urlsplit(settings.feature_store.postgres.dsn).port or 5432
    return (
        f"until {POSTGRES_BIN / 'pg_isready'} -q -h 127.0.0.1 -p {pg_port};"
        " do sleep 0.5; done; exec "
    )


def _stack_prometheus(settings: Settings, run_dir: Path, prometheus_port: int) -> ProcessSpec:
    """Prometheus on `prometheus_port`, scraping this stack's ports (configuration and data
    under `run_dir`)."""
    prometheus_config = run_dir / "prometheus.yml"
    prometheus_config.write_text(
        yaml.safe_dump(stack_prometheus_config(settings, prometheus_port), sort_keys=False),
        encoding="utf-8",
    )
    return ProcessSpec(
        [
            "prometheus",
            f"--config.file={prometheus_config}",
            f"--storage.tsdb.path={run_dir / 'prometheus'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ]
    )


def _stack_sidecar(settings: Settings, config: Path, wait_for_postgres: str) -> ProcessSpec:
    """The experiment sidecar: controller, decisions, routing state in Postgres."""
    sidecar = shlex.join([sys.executable, "-m", "ab", "sidecar", "--config", str(config)])
    return ProcessSpec(
        ["sh", "-c", wait_for_postgres + sidecar],
        {
            "RECSYS__AB_TESTING__CONTROLLER__METRICS_HOST": "127.0.0.1",
            "RECSYS__AB_TESTING__CONTROLLER__METRICS_PORT": str(
                stack_sidecar_metrics_port(settings)
            ),
        },
    )


def _stack_gateways(
    settings: Settings, config: Path, run_dir: Path, wait_for_postgres: str
) -> dict[str, ProcessSpec]:
    """`serving.processes` gateways on the ports after nginx's, metrics on the ports after
    `monitoring.metrics.port`, one exposure log and one event spool each."""
    gateway = shlex.join(_gateway(config))
    ports = zip(stack_gateway_ports(settings), stack_metrics_ports(settings), strict=True)
    return {
        f"gateway{i + 1}": ProcessSpec(
            ["sh", "-c", wait_for_postgres + gateway],
            {
                "RECSYS__SERVING__HOST": "127.0.0.1",
                "RECSYS__SERVING__PORT": str(port),
                "RECSYS__MONITORING__METRICS__PORT": str(metrics_port),
                "RECSYS__FEATURE_STORE__EMBEDDED__EVENT_LOG_PATH": str(run_dir / "events.sqlite3"),
                "RECSYS__AB_TESTING__EXPOSURE_LOG_PATH": str(run_dir / f"exposures{i + 1}.sqlite3"),
                # One spool per process: each replays only its own file.
                "RECSYS__FEATURE_STORE__SPOOL_PATH": str(run_dir / f"event-spool{i + 1}.jsonl"),
            },
        )
        for i, (port, metrics_port) in enumerate(ports)
    }
