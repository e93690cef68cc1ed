"""The HTTP side port: Prometheus metrics after real traffic, and /health mirroring gRPC."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable

import pytest
from recsys.v1 import recommendation_pb2 as pb

from gateway.config import Settings
from tests.conftest import async_stub, metric_samples, running_gateway

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


async def test_metrics_and_health(make_settings: Callable[..., Settings]) -> None:
    async with running_gateway(make_settings()) as (server, channel):
        resources_http = server.http_port
        assert resources_http is not None
        base = f"http://127.0.0.1:{resources_http}"
        assert await asyncio.to_thread(_get, f"{base}/health") == (200, "SERVING\n")

        stub = async_stub(channel)
        for _ in range(3):
            await stub.Recommend(pb.RecommendRequest(user_id="17850", num_items=5), timeout=5)
        with pytest.raises(Exception, match="num_items"):
            await stub.Recommend(pb.RecommendRequest(user_id="17850", num_items=0), timeout=5)

        status, text = await asyncio.to_thread(_get, f"{base}/metrics")
        assert status == 200
        samples = metric_samples(text)
        ok = frozenset({("method", "Recommend"), ("code", "OK")})
        bad = frozenset({("method", "Recommend"), ("code", "INVALID_ARGUMENT")})
        assert samples[("recsys_grpc_requests_total", ok)] == 3
        assert samples[("recsys_grpc_requests_total", bad)] == 1
        assert samples[("recsys_grpc_request_duration_seconds_count", ok)] == 3
        for stage in ("assign", "features", "candidates", "filter", "rank", "rerank", "respond"):
            key = ("recsys_stage_duration_seconds_count", frozenset({("stage", stage)}))
            assert samples[key] == 3, stage
        assert (
            samples[("recsys_degraded_responses_total", frozenset({("reason", "NO_MODEL")}))] == 3
        )
        assert samples[("recsys_candidates_count", frozenset({("phase", "filtered")}))] == 3
        exposures: Counter[str] = Counter()
        for (name, labels), value in samples.items():
            if name == "recsys_exposures_total":
                exposures[dict(labels)["experiment"]] += int(value)
        # one exposure per response in each experiment the user is in (one per layer)
        assert exposures == {"ranker_v2_vs_v3": 3, "mixed_vs_buy_again": 3}

        await server.drain_and_stop(0)
        assert await asyncio.to_thread(_get, f"{base}/health") == (503, "NOT_SERVING\n")
        assert (await asyncio.to_thread(_get, f"{base}/nope"))[0] == 404
