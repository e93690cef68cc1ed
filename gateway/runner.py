"""`make run` and `make stack`: the local profiles under honcho (a maintained supervisor).

- `local` (`make run`): Triton (the `tritonserver` binary of the nvidia-pytriton wheel) when a
  local model repository has been built, then one gateway on `serving.port`.
- `stack` (`make stack`): nginx on `serving.port` load-balancing gRPC over
  `serving.processes` gateway processes on the following ports (metrics on the ports after
  `monitoring.metrics.port`), plus Triton when built.

Both wait until gRPC health reports SERVING on `serving.port`, print how to call the service,
and stop everything cleanly on Ctrl-C (honcho forwards the signal to every process).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from honcho.manager import Manager

from gateway.config import ConfigError, Settings, load_settings

READY_TIMEOUT_S = 180.0
REPO = Path(__file__).resolve().parents[1]
NGINX_RENDER = REPO / "infra" / "nginx" / "render-config"


@dataclass(frozen=True)
class ProcessSpec:
    """One supervised process: its command line and the environment it adds."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def _triton(settings: Settings) -> dict[str, ProcessSpec]:
    repository = settings.model.artifacts_dir / "triton" / "local"
    if not repository.is_dir():
        return {}
    # Poll mode: a new model version dropped into the repository is loaded without a restart,
    # and the gateway's model registry routes to it once Triton reports it READY.
    argv = [
        sys.executable,
        "-m",
        "triton_models.tritonserver",
        "--model-repository",
        str(repository),
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        "5",
    ]
    return {"triton": ProcessSpec(argv)}


def _gateway(config: Path) -> list[str]:
    return [sys.executable, "-m", "gateway.main", "--config", str(config)]


def local_processes(settings: Settings, config: Path) -> dict[str, ProcessSpec]:
    """The `make run` profile: Triton (when built) and one gateway."""
    return {**_triton(settings), "gateway": ProcessSpec(_gateway(config))}


def stack_processes(settings: Settings, config: Path, run_dir: Path) -> dict[str, ProcessSpec]:
    """The `make stack` profile: nginx in front of `serving.processes` gateways (+ Triton).

    Writes nginx's configuration under `run_dir`.
    """
    serving = settings.serving
    first_port = serving.port + 1
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "tmp").mkdir(exist_ok=True)
    subprocess.run(
        [
            str(NGINX_RENDER),
            "--gateways",
            str(serving.processes),
            "--host",
            "127.0.0.1",
            "--base-port",
            str(first_port),
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
    processes = dict(_triton(settings))
    processes["nginx"] = ProcessSpec(
        ["nginx", "-p", str(run_dir), "-c", str(run_dir / "nginx.conf"), "-g", "daemon off;"]
    )
    for i in range(serving.processes):
        processes[f"gateway{i + 1}"] = ProcessSpec(
            _gateway(config),
            {
                "RECSYS__SERVING__HOST": "127.0.0.1",
                "RECSYS__SERVING__PORT": str(first_port + i),
                "RECSYS__MONITORING__METRICS__PORT": str(settings.monitoring.metrics.port + 1 + i),
            },
        )
    return processes


def wait_until_serving(target: str, timeout_s: float, stopped: threading.Event) -> bool:
    """Polls the gRPC health service until it reports SERVING; False on timeout or stop."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and not stopped.is_set():
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            stopped.wait(0.5)
    return False


def _announce(target: str, stopped: threading.Event) -> None:
    if wait_until_serving(target, READY_TIMEOUT_S, stopped):
        print(
            f"\n  recsys is SERVING on {target}. From another shell:\n"
            f"    grpcurl -plaintext {target} list\n"
            f'    grpcurl -plaintext -d \'{{"user_id": "17850", "num_items": 5}}\' '
            f"{target} recsys.v1.RecommendationService/Recommend\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )
    elif not stopped.is_set():
        print(
            f"\n  recsys did not report SERVING on {target} within {READY_TIMEOUT_S:.0f} s; "
            "see the log above.\n",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="recsys-run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("infra/config/local.yaml"))
    parser.add_argument("--profile", choices=("local", "stack"), default="local")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(".run/stack"),
        help="where the stack profile writes nginx's config and logs",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, os.environ)
    except ConfigError as exc:
        sys.exit(f"recsys-run: {exc}")
    if args.profile == "stack":
        processes = stack_processes(settings, args.config, args.run_dir.resolve())
    else:
        processes = local_processes(settings, args.config)
    manager = Manager()
    for name, spec in processes.items():
        manager.add_process(name, shlex.join(spec.argv), env={**os.environ, **spec.env})
    stopped = threading.Event()
    target = f"{settings.serving.host}:{settings.serving.port}"
    threading.Thread(target=_announce, args=(target, stopped), daemon=True).start()
    try:
        manager.loop()
    finally:
        stopped.set()
    sys.exit(manager.returncode)


if __name__ == "__main__":
    main()
