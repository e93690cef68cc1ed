"""A real Prometheus (Debian's package) scrapes a running gateway; its HTTP API then returns
the gateway's series with the values the traffic produced."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from recsys.v1 import recommendation_pb2 as pb

from gateway.config import Settings
from infra.local.ports import free_port
from infra.local.tritonserver import TritonServer
from tests.conftest import async_stub, running_gateway

pytestmark = pytest.mark.integration


def _query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as reply:
        body = json.load(reply)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int, int], int]]:
    """`start(gateway_port, triton_port)` runs Prometheus scraping both metrics ports every
    second and returns its HTTP port."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: run `make system`"
    processes: list[subprocess.Popen[bytes]] = []

    def start(target_port: int, triton_port: int) -> int:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: recsys-gateway\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
            "  - job_name: triton\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{triton_port}']}}]\n"
        )
        with (tmp_path / "prometheus.log").open("wb") as log:  # the child keeps its own copy
            processes.append(
                subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        return port

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


async def test_prometheus_scrapes_the_gateway_and_triton(
    make_settings: Callable[..., Settings],
    prometheus: Callable[[int, int], int],
    start_tritonserver: Callable[..., TritonServer],
    models: Path,
) -> None:
    triton = start_tritonserver(models)
    settings = make_settings(
        MODEL__REPOSITORY_DIR=str(models),
        MODEL__RANKER__TRITON_GRPC_URL=triton.grpc_url,
        MODEL__RANKER__TRITON_HTTP_URL=triton.http_url,
        MODEL__RANKER__TIMEOUT_MS="2000",
        SERVING__DEFAULT_DEADLINE_MS="5000",
    )
    async with running_gateway(settings) as (server, channel):
        assert server.http_port is not None
        port = prometheus(server.http_port, triton.options.metrics_port)
        stub = async_stub(channel)
        for i in range(7):
            await stub.Recommend(pb.RecommendRequest(user_id=str(12347 + i)), timeout=5)
        expr = 'recsys_grpc_requests_total{job="recsys-gateway",method="Recommend",code="OK"}'
        deadline = time.monotonic() + 60
        series: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                series = await asyncio.to_thread(_query, port, expr)
            except OSError:
                series = []  # Prometheus still starting
            if series and float(series[0]["value"][1]) == 7:
                break
            await asyncio.sleep(0.5)
        assert series and float(series[0]["value"][1]) == 7, series
        up = await asyncio.to_thread(_query, port, 'up{job="recsys-gateway"}')
        assert float(up[0]["value"][1]) == 1
        stages = await asyncio.to_thread(
            _query, port, "count(recsys_stage_duration_seconds_count) by (job)"
        )
        assert float(stages[0]["value"][1]) == 7  # one series per pipeline stage
        memory = await asyncio.to_thread(
            _query, port, 'process_resident_memory_bytes{job="recsys-gateway"}'
        )
        assert float(memory[0]["value"][1]) > 10e6
        # Triton's own series: the ensembles ranked those 7 requests.
        ranked: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        expr = 'sum(nv_inference_request_success{job="triton",model=~"ranker_v[23]"})'
        while time.monotonic() < deadline:
            ranked = await asyncio.to_thread(_query, port, expr)
            if ranked and float(ranked[0]["value"][1]) >= 7:
                break
            await asyncio.sleep(0.5)
        assert ranked and float(ranked[0]["value"][1]) >= 7, ranked
        triton_up = await asyncio.to_thread(_query, port, 'up{job="triton"}')
        assert float(triton_up[0]["value"][1]) == 1
