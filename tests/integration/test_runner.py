"""`make run`'s runner: starts the gateways under supervisord, announces SERVING, stops on Ctrl-C
or SIGTERM; several gateways share one port and see each other's events."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from recsys.v1 import recommendation_pb2 as pb
from recsys.v1 import recommendation_pb2_grpc as pb_grpc

from infra.local.ports import ensure_port_free, free_port, free_port_block
from tests.conftest import LOCAL_CONFIG, REPO, metric_samples, user_event

pytestmark = pytest.mark.integration


def test_runner_serves_and_stops_cleanly(build_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "RECSYS__SERVING__PORT": str(port),
            # One gateway here (its own metrics port); several: test_gateways_share_one_port...
            "RECSYS__SERVING__PROCESSES": "1",
            "RECSYS__MONITORING__METRICS__PORT": str(free_port()),
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
        [
            sys.executable,
            "-m",
            "infra.local.runner",
            "--config",
            str(LOCAL_CONFIG),
            "--run-dir",
            str(tmp_path / "run"),
        ],
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


def _start_runner(env: dict[str, str], run_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """The runner of the local profile, and its output up to the SERVING banner."""
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infra.local.runner",
            "--config",
            str(LOCAL_CONFIG),
            "--run-dir",
            str(run_dir),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert runner.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = runner.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops everything" in line or "did not report SERVING" in line:
            break
    return runner, "".join(lines)


def _recommend_counts(metrics_ports: list[int]) -> list[float]:
    counts = []
    for port in metrics_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            samples = metric_samples(reply.read().decode())
        counts.append(
            sum(
                value
                for (name, labels), value in samples.items()
                if name == "recsys_grpc_requests_total" and ("method", "Recommend") in labels
            )
        )
    return counts


def _recommended(channel: grpc.Channel, user_id: str) -> list[str]:
    reply = pb_grpc.RecommendationServiceStub(channel).Recommend(
        pb.RecommendRequest(user_id=user_id, num_items=10), timeout=10
    )
    return [r.item_id for r in reply.recommendations]


def _serving_process(channel: grpc.Channel, metrics_ports: list[int]) -> int:
    """Which gateway answers on this channel's connection (the one whose counter moved; the
    test is their only client)."""
    before = _recommend_counts(metrics_ports)
    _recommended(channel, "17850")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        moved = [
            i
            for i, (a, b) in enumerate(zip(before, _recommend_counts(metrics_ports), strict=True))
            if b > a
        ]
        if moved:
            assert len(moved) == 1, moved
            return moved[0]
        time.sleep(0.05)
    raise AssertionError("no gateway counted the call")


def _until_gone(channel: grpc.Channel, user_id: str, item_id: str, within_s: float) -> float:
    """Seconds until `item_id` leaves the user's recommendations on this channel."""
    start = time.monotonic()
    while item_id in _recommended(channel, user_id):
        assert time.monotonic() - start < within_s, f"{item_id} still recommended to {user_id}"
        time.sleep(0.02)
    return time.monotonic() - start


def test_gateways_share_one_port_see_each_others_events_and_stop_on_sigterm(
    build_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    metrics_base = free_port_block(3)  # the base, then one port per gateway after it
    metrics_ports = [metrics_base + 1, metrics_base + 2]
    env = dict(os.environ)
    env.update(
        {
            "RECSYS__SERVING__PORT": str(port),
            "RECSYS__SERVING__PROCESSES": "2",
            "RECSYS__SERVING__RATE_LIMIT": "",
            "RECSYS__MONITORING__METRICS__PORT": str(metrics_base),
            "RECSYS__MODEL__ARTIFACTS_DIR": str(build_dir),
            # No Triton: two gateways are enough for two cores; the fallback ranking filters
            # the same way.
            "RECSYS__MODEL__REPOSITORY_DIR": str(tmp_path / "no-model-repository"),
            "RECSYS__MODEL__RERANKER__FILTER_RECENTLY_PURCHASED": "true",
            "RECSYS__FEATURE_STORE__EMBEDDED__EVENT_LOG_PATH": str(tmp_path / "events.sqlite3"),
            "RECSYS__FEATURE_STORE__EMBEDDED__TAIL_INTERVAL_S": "0.1",
            "RECSYS__AB_TESTING__EXPOSURE_LOG_PATH": str(tmp_path / "exposures.sqlite3"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    runner, banner = _start_runner(env, tmp_path / "run")
    channels: list[grpc.Channel] = []
    try:
        assert f"recsys is SERVING on 127.0.0.1:{port}" in banner, banner
        # Separate connections (a channel of its own each), which the kernel spreads.
        by_process: dict[int, list[grpc.Channel]] = {0: [], 1: []}
        for _ in range(16):
            channel = grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            channels.append(channel)
            by_process[_serving_process(channel, metrics_ports)].append(channel)
        assert by_process[0] and by_process[1], "every connection went to one gateway"
        assert all(count > 0 for count in _recommend_counts(metrics_ports))

        # A purchase recorded through one gateway reaches the other's filter...
        first, second = by_process[0][0], by_process[1][0]
        user = "17850"
        bought = _recommended(second, user)[0]
        reply = pb_grpc.RecommendationServiceStub(first).RecordEvents(
            pb.RecordEventsRequest(
                events=[
                    user_event(
                        "cross-1",
                        pb.EVENT_TYPE_PURCHASE,
                        item_id=bought,
                        quantity=1,
                        revenue=2.95,
                        currency="GBP",
                    )
                ]
            ),
            timeout=10,
        )
        assert reply.accepted == 1
        assert bought not in _recommended(first, user)  # its own process: the next call
        assert _until_gone(second, user, bought, within_s=5.0) < 5.0
        # ...and a view recorded through the other reaches the first.
        viewed = _recommended(first, user)[0]
        pb_grpc.RecommendationServiceStub(second).RecordEvents(
            pb.RecordEventsRequest(events=[user_event("cross-2", item_id=viewed)]), timeout=10
        )
        assert _until_gone(first, user, viewed, within_s=5.0) < 5.0

        for channel in channels:
            channel.close()
        channels.clear()
        runner.send_signal(signal.SIGTERM)  # as a supervisor (systemd, Kubernetes) stops it
        output, _ = runner.communicate(timeout=60)
        assert output.count("stopped") >= 2, output  # both drained and closed their resources
        # The runner's exit status after stopping everything on a signal: 128 + its number.
        assert runner.returncode == 128 + signal.SIGTERM, output
        ensure_port_free("127.0.0.1", port)  # no gateway holds the port
        for metrics_port in metrics_ports:
            with pytest.raises(urllib.error.URLError, match="refused"):
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/health", timeout=2)
    finally:
        for channel in channels:
            channel.close()
        if runner.poll() is None:
            runner.send_signal(signal.SIGINT)
            try:
                runner.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.communicate()
