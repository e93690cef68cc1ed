"""`make run`: the local profile under honcho (process supervision by a maintained library).

Starts Triton (the `tritonserver` binary of the nvidia-pytriton wheel) when a local model
repository has been built, then the gateway; waits until gRPC health reports SERVING, prints how
to call the service, and stops everything cleanly on Ctrl-C (honcho forwards the signal).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from honcho.manager import Manager

from gateway.config import ConfigError, Settings, load_settings

READY_TIMEOUT_S = 180.0


def process_commands(settings: Settings, config: Path) -> dict[str, list[str]]:
    """The processes of the local profile and their exact command lines."""
    commands: dict[str, list[str]] = {}
    repository = settings.model.artifacts_dir / "triton" / "local"
    if repository.is_dir():
        commands["triton"] = [
            sys.executable,
            "-m",
            "triton_models.tritonserver",
            "--model-repository",
            str(repository),
        ]
    commands["gateway"] = [sys.executable, "-m", "gateway.main", "--config", str(config)]
    return commands


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
    parser = argparse.ArgumentParser(prog="recsys-run", description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("infra/config/local.yaml"))
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, os.environ)
    except ConfigError as exc:
        sys.exit(f"recsys-run: {exc}")
    manager = Manager()
    for name, command in process_commands(settings, args.config).items():
        manager.add_process(name, shlex.join(command), env=dict(os.environ))
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
