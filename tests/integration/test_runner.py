"""`make run`'s runner: starts the gateway under honcho, announces SERVING, stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from recsys.v1 import recommendation_pb2 as pb
from recsys.v1 import recommendation_pb2_grpc as pb_grpc

from tests.conftest import LOCAL_CONFIG, REPO
from triton_models.tritonserver import free_port_block

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_runner_serves_and_stops_cleanly(build_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    env = dict(os.environ)
    env.update(
        {
            "RECSYS__SERVING__PORT": str(port),
            "RECSYS__MONITORING__METRICS__PORT": str(_free_port()),
            # Triton off its default ports 8000-8002, which another server may hold.
            # (HTTP, gRPC, metrics on three consecutive ports; gRPC is the middle one).
            "RECSYS__MODEL__RANKER__TRITON_GRPC_URL": f"127.0.0.1:{free_port_block(3) + 1}",
            "RECSYS__MODEL__ARTIFACTS_DIR": str(build_dir),
            "RECSYS__FEATURE_STORE__EMBEDDED__EVENT_LOG_PATH": str(tmp_path / "events.sqlite3"),
            "RECSYS__AB_TESTING__EXPOSURE_LOG_PATH": str(tmp_path / "exposures.sqlite3"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    runner = subprocess.Popen(
        [sys.executable, "-m", "gateway.runner", "--config", str(LOCAL_CONFIG)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert runner.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = runner.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        banner = "".join(lines)
        assert "is SERVING" in banner, banner
        # The banner says who ranks: Triton (ready or still loading) when the repository is built.
        if (build_dir / "triton" / "local").is_dir():
            assert "ranked by Triton" in banner or "Triton is still loading" in banner, banner
        else:
            assert "answers come from the popularity ranking" in banner, banner
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = pb_grpc.RecommendationServiceStub(channel).Recommend(
                pb.RecommendRequest(user_id="17850", num_items=4), timeout=10
            )
        assert len(reply.recommendations) == 4
        if "ranked by Triton" in banner:
            # Triton warms every instance before READY, so the very first call is not a cold
            # one past the ranker timeout, answered by the fallback.
            assert reply.model_version.startswith("ranker_"), reply
            assert not reply.degraded, reply
        runner.send_signal(signal.SIGINT)
        output, _ = runner.communicate(timeout=30)
        assert "stopped" in output  # the gateway drained and closed its resources
    finally:
        if runner.poll() is None:
            # SIGINT first: the runner stops Triton and the gateway, which run in sessions of
            # their own; killing only the runner would leave them holding their ports.
            runner.send_signal(signal.SIGINT)
            try:
                runner.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.communicate()  # also closes the pipe, which would leak into later tests
