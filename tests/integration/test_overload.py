"""Overload: bounded concurrency rejects fast with RESOURCE_EXHAUSTED; expired deadlines are
not worked on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime

import grpc
import pytest
from recsys.v1 import recommendation_pb2 as pb

from feature_service.embedded import EmbeddedFeatureStore
from feature_service.store import UserFeatures
from gateway.config import Settings
from tests.conftest import async_stub, running_gateway

pytestmark = pytest.mark.integration


@pytest.fixture
def slow_features(monkeypatch: pytest.MonkeyPatch) -> None:
    """Feature reads take 300 ms, so requests stay in flight."""
    original = EmbeddedFeatureStore.user_features

    async def slow(self: EmbeddedFeatureStore, user_id: str, now: datetime) -> UserFeatures:
        await asyncio.sleep(0.3)
        return await original(self, user_id, now)

    monkeypatch.setattr(EmbeddedFeatureStore, "user_features", slow)


@pytest.mark.usefixtures("slow_features")
async def test_excess_concurrency_is_rejected_fast(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(SERVING__MAX_CONCURRENT_RPCS="4", SERVING__DEFAULT_DEADLINE_MS="5000")
    async with running_gateway(settings) as (_, channel):
        stub = async_stub(channel)

        async def call() -> tuple[grpc.StatusCode, float]:
            started = time.monotonic()
            try:
                await stub.Recommend(pb.RecommendRequest(user_id="17850"), timeout=10)
                return grpc.StatusCode.OK, time.monotonic() - started
            except grpc.aio.AioRpcError as error:
                return error.code(), time.monotonic() - started

        results = await asyncio.gather(*(call() for _ in range(20)))
    ok = [t for code, t in results if code == grpc.StatusCode.OK]
    rejected = [t for code, t in results if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(ok) + len(rejected) == 20
    assert 1 <= len(ok) <= 8 and len(rejected) >= 12
    # Rejections do not queue behind the slow requests.
    assert max(rejected) < 0.25


@pytest.mark.usefixtures("slow_features")
async def test_an_expired_deadline_is_not_worked_on(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(SERVING__DEFAULT_DEADLINE_MS="100")
    async with running_gateway(settings) as (_, channel):
        stub = async_stub(channel)
        # The client allows 5 s but the server's own budget is 100 ms: the features stage
        # gives up after its share and the request still answers, degraded, in time.
        started = time.monotonic()
        reply = await stub.Recommend(pb.RecommendRequest(user_id="17850"), timeout=5)
        assert time.monotonic() - started < 0.3
        assert pb.DEGRADED_REASON_FEATURES_UNAVAILABLE in reply.degraded_reasons
        assert len(reply.recommendations) == 10
        # A client deadline shorter than the slow read: the budget follows the client's
        # deadline, so the answer comes degraded and in time (or, on a stalled machine, as
        # DEADLINE_EXCEEDED), never late.
        started = time.monotonic()
        try:
            reply = await stub.Recommend(pb.RecommendRequest(user_id="17850"), timeout=0.05)
            outcome = (
                grpc.StatusCode.OK,
                pb.DEGRADED_REASON_FEATURES_UNAVAILABLE in reply.degraded_reasons,
            )
        except grpc.aio.AioRpcError as error:
            outcome = (error.code(), True)
        assert outcome in {(grpc.StatusCode.OK, True), (grpc.StatusCode.DEADLINE_EXCEEDED, True)}
        assert time.monotonic() - started < 0.25
