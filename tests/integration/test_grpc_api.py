"""The public API through a real gRPC channel: happy paths, every validation rule, health,
reflection, idempotent events, and graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from recsys.v1 import recommendation_pb2 as pb

from ab.exposures import SqliteExposureSink
from feature_service.embedded import EmbeddedFeatureStore
from feature_service.store import UserFeatures
from gateway.config import Settings
from gateway.server import RunningServer
from tests.conftest import (
    LOCAL_CONFIG,
    REPO,
    async_stub,
    running_gateway,
    timestamp,
    user_event,
)

pytestmark = pytest.mark.integration

Gateway = tuple[RunningServer, grpc.aio.Channel]


async def _recommend_error(
    channel: grpc.aio.Channel, request: pb.RecommendRequest
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await async_stub(channel).Recommend(request, timeout=5)
    return caught.value


async def _events_error(
    channel: grpc.aio.Channel, request: pb.RecordEventsRequest
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await async_stub(channel).RecordEvents(request, timeout=5)
    return caught.value


async def test_recommend_returns_num_items_with_metadata(
    gateway: Gateway, real_user_ids: list[str]
) -> None:
    _, channel = gateway
    stub = async_stub(channel)
    for user_id in real_user_ids[:5]:
        reply = await stub.Recommend(
            pb.RecommendRequest(user_id=user_id, num_items=7, request_id=f"req-{user_id}"),
            timeout=5,
        )
        assert len(reply.recommendations) == 7
        assert reply.request_id == f"req-{user_id}"
        assert reply.latency_ms > 0
        ids = [r.item_id for r in reply.recommendations]
        assert len(set(ids)) == 7
        scores = [r.score for r in reply.recommendations]
        assert scores == sorted(scores, reverse=True)
        for rec in reply.recommendations:
            assert rec.metadata.title and rec.metadata.price > 0
            assert rec.metadata.currency == "GBP"
            assert rec.metadata.category == rec.metadata.category_path[0]
        # The fallback ranker answers until a trained model is deployed, and says so.
        assert reply.model_version == "popularity"
        assert reply.degraded and list(reply.degraded_reasons) == [pb.DEGRADED_REASON_NO_MODEL]
        assert reply.experiment_id in {"ranker_v2_vs_v3_control", "ranker_v2_vs_v3_treatment"}


async def test_defaults_and_unknown_user(gateway: Gateway) -> None:
    _, channel = gateway
    reply = await async_stub(channel).Recommend(
        pb.RecommendRequest(user_id="new-visitor-1"), timeout=5
    )
    assert len(reply.recommendations) == 10
    assert len(reply.request_id) == 32  # generated


async def test_excluded_and_recently_viewed_items_are_filtered(gateway: Gateway) -> None:
    _, channel = gateway
    stub = async_stub(channel)
    first = await stub.Recommend(pb.RecommendRequest(user_id="12347", num_items=5), timeout=5)
    top = [r.item_id for r in first.recommendations]
    reply = await stub.Recommend(
        pb.RecommendRequest(user_id="12347", num_items=5, exclude_item_ids=top[:2]), timeout=5
    )
    assert not {r.item_id for r in reply.recommendations} & set(top[:2])
    assert len(reply.recommendations) == 5

    viewed = top[2]
    ack = await stub.RecordEvents(
        pb.RecordEventsRequest(
            events=[
                user_event("view-1", user_id="12347", item_id=viewed),
            ]
        ),
        timeout=5,
    )
    assert (ack.accepted, ack.duplicates) == (1, 0)
    after = await stub.Recommend(pb.RecommendRequest(user_id="12347", num_items=5), timeout=5)
    assert viewed not in {r.item_id for r in after.recommendations}
    assert len(after.recommendations) == 5


async def test_record_events_is_idempotent(gateway: Gateway) -> None:
    _, channel = gateway
    stub = async_stub(channel)
    batch = pb.RecordEventsRequest(
        events=[
            user_event("e-1", pb.EVENT_TYPE_IMPRESSION, request_id="r1", position=0),
            user_event("e-2", pb.EVENT_TYPE_CLICK, request_id="r1", position=0),
            user_event("e-3", pb.EVENT_TYPE_PURCHASE, quantity=2, revenue=5.9, currency="GBP"),
            user_event("e-3", pb.EVENT_TYPE_PURCHASE, quantity=2, revenue=5.9, currency="GBP"),
        ]
    )
    first = await stub.RecordEvents(batch, timeout=5)
    assert (first.accepted, first.duplicates) == (3, 1)
    replay = await stub.RecordEvents(batch, timeout=5)
    assert (replay.accepted, replay.duplicates) == (0, 4)


async def test_bad_event_in_batch_stores_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with running_gateway(settings) as (_, channel):
        stub = async_stub(channel)
        bad = pb.RecordEventsRequest(events=[user_event("ok-1"), user_event("bad", revenue=-1.0)])
        error = await _events_error(channel, bad)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        good = await stub.RecordEvents(
            pb.RecordEventsRequest(events=[user_event("ok-1")]), timeout=5
        )
        assert good.accepted == 1  # "ok-1" was not written by the rejected batch


LONG = "1" * 129


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"user_id": ""}, "user_id: is required"),
        ({"user_id": LONG}, "user_id: is 129 characters long"),
        ({"user_id": " 17850"}, "user_id: has leading or trailing whitespace"),
        ({"user_id": "17850\n"}, "user_id: has leading or trailing whitespace"),
        ({"user_id": "178\x0050"}, "user_id: contains the control or format character U+0000"),
        ({"user_id": "178\u200b50"}, "user_id: contains the control or format character U+200B"),
        ({"user_id": "17850", "num_items": 0}, "num_items: must be between 1 and 100, got 0"),
        ({"user_id": "17850", "num_items": 101}, "num_items: must be between 1 and 100, got 101"),
        ({"user_id": "17850", "num_items": -3}, "num_items: must be between 1 and 100, got -3"),
        (
            {"user_id": "17850", "context": pb.RequestContext(device=42)},
            "context.device: unknown Device value 42",
        ),
        (
            {"user_id": "17850", "context": pb.RequestContext(page=9)},
            "context.page: unknown Page value 9",
        ),
        (
            {"user_id": "17850", "context": pb.RequestContext(country="gb")},
            "context.country: must be an ISO 3166-1 alpha-2 code",
        ),
        (
            {"user_id": "17850", "context": pb.RequestContext(locale="en_GB!")},
            "context.locale: must be a BCP 47 tag",
        ),
        (
            {"user_id": "17850", "context": pb.RequestContext(client_time=Timestamp(nanos=-1))},
            "context.client_time: is not a valid timestamp",
        ),
        (
            {"user_id": "17850", "context": pb.RequestContext(session_id="s\x07")},
            "context.session_id: contains the control or format character U+0007",
        ),
        (
            {"user_id": "17850", "exclude_item_ids": ["85123A", ""]},
            "exclude_item_ids[1]: is required",
        ),
        (
            {"user_id": "17850", "exclude_item_ids": ["x" * 65]},
            "exclude_item_ids[0]: is 65 characters long",
        ),
        (
            {"user_id": "17850", "exclude_item_ids": [str(i) for i in range(501)]},
            "exclude_item_ids: has 501 ids, at most 500",
        ),
        ({"user_id": "17850", "request_id": "r" * 129}, "request_id: is 129 characters long"),
    ],
)
async def test_recommend_validation(
    gateway: Gateway, request_fields: dict[str, object], field: str
) -> None:
    error = await _recommend_error(gateway[1], pb.RecommendRequest(**request_fields))  # type: ignore[arg-type]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "")


@pytest.mark.parametrize("offset", [timedelta(days=3), -timedelta(days=400)])
async def test_client_clock_far_off_is_answered_with_server_time(
    gateway: Gateway, offset: timedelta
) -> None:
    # A phone whose clock is days off still gets recommendations; the reply says the server's
    # clock was used.
    _, channel = gateway
    context = pb.RequestContext(client_time=timestamp(datetime.now(UTC) + offset))
    reply = await async_stub(channel).Recommend(
        pb.RecommendRequest(user_id="17850", num_items=5, context=context), timeout=5
    )
    assert len(reply.recommendations) == 5
    assert reply.degraded
    assert pb.DEGRADED_REASON_CLIENT_CLOCK_SKEW in reply.degraded_reasons
    # Within a day of the server's clock, the client's time is used and nothing is flagged.
    context = pb.RequestContext(client_time=timestamp(datetime.now(UTC) - timedelta(hours=20)))
    reply = await async_stub(channel).Recommend(
        pb.RecommendRequest(user_id="17850", num_items=5, context=context), timeout=5
    )
    assert pb.DEGRADED_REASON_CLIENT_CLOCK_SKEW not in reply.degraded_reasons


async def test_oversize_request_is_invalid_argument(gateway: Gateway) -> None:
    # Under the transport limit (gRPC itself would say RESOURCE_EXHAUSTED) but over ours.
    request = pb.RecommendRequest(user_id="17850", exclude_item_ids=["x" * 60] * 2000)
    error = await _recommend_error(gateway[1], request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request: is" in (error.details() or "") and "bytes" in (error.details() or "")


async def test_invalid_utf8_is_invalid_argument(gateway: Gateway) -> None:
    _, channel = gateway
    # Field 1 (user_id), wire type 2, length 2, bytes that are not UTF-8.
    raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        "/recsys.v1.RecommendationService/Recommend",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(b"\x0a\x02\xff\xfe", timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request: is not a valid message" in (caught.value.details() or "")


NOW = datetime.now(UTC)


@pytest.mark.parametrize(
    ("events", "field"),
    [
        ([], "events: must hold 1 to 1000 events, got 0"),
        ([user_event(str(i)) for i in range(1001)], "events: must hold 1 to 1000 events, got 1001"),
        ([user_event("")], "events[0].event_id: is required"),
        ([user_event("a"), user_event("b", type=0)], "events[1].type: unknown or unspecified"),
        ([user_event("a", type=17)], "events[0].type: unknown or unspecified EventType 17"),
        ([user_event("a", user_id="")], "events[0].user_id: is required"),
        ([user_event("a", user_id="u\x01")], "events[0].user_id: contains the control"),
        ([user_event("a", item_id="")], "events[0].item_id: is required"),
        (
            [pb.UserEvent(event_id="a", type=pb.EVENT_TYPE_CLICK, user_id="1", item_id="2")],
            "events[0].timestamp: is required",
        ),
        (
            [user_event("a", timestamp=timestamp(NOW + timedelta(days=400)))],
            "events[0].timestamp: lies in the future",
        ),
        (
            [user_event("a", timestamp=timestamp(datetime(1990, 1, 1, tzinfo=UTC)))],
            "events[0].timestamp: is before 2000-01-01",
        ),
        (
            [user_event("a", timestamp=Timestamp(seconds=1, nanos=-5))],
            "events[0].timestamp: is not a valid timestamp",
        ),
        (
            [user_event("a", pb.EVENT_TYPE_PURCHASE, revenue=float("nan"), currency="GBP")],
            "events[0].revenue: must be a finite amount >= 0",
        ),
        (
            [user_event("a", pb.EVENT_TYPE_PURCHASE, revenue=-2.0, currency="GBP")],
            "events[0].revenue: must be a finite amount >= 0",
        ),
        (
            [user_event("a", pb.EVENT_TYPE_PURCHASE, revenue=float("inf"), currency="GBP")],
            "events[0].revenue: must be a finite amount >= 0",
        ),
        (
            [user_event("a", pb.EVENT_TYPE_PURCHASE, revenue=3.0, currency="pounds")],
            "events[0].currency: must be an ISO 4217 code",
        ),
        (
            [user_event("a", pb.EVENT_TYPE_PURCHASE, revenue=3.0, currency="GBP", quantity=-1)],
            "events[0].quantity: must be between 1 and",
        ),
        (
            [user_event("a", pb.EVENT_TYPE_CLICK, revenue=3.0)],
            "events[0].revenue: quantity, revenue and currency are only allowed on purchases",
        ),
        ([user_event("a", position=-1)], "events[0].position: must be between 0 and 10000"),
    ],
)
async def test_record_events_validation(
    gateway: Gateway, events: list[pb.UserEvent], field: str
) -> None:
    error = await _events_error(gateway[1], pb.RecordEventsRequest(events=events))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "")


async def test_limits_come_from_configuration(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(SERVING__MAX_EXCLUDE_ITEMS="2", SERVING__MAX_EVENTS_PER_BATCH="1")
    async with running_gateway(settings) as (_, channel):
        error = await _recommend_error(
            channel, pb.RecommendRequest(user_id="1", exclude_item_ids=["a", "b", "c"])
        )
        assert (error.code(), error.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "exclude_item_ids: has 3 ids, at most 2 are accepted",
        )
        error = await _events_error(
            channel, pb.RecordEventsRequest(events=[user_event("a"), user_event("b")])
        )
        assert error.details() == "events: must hold 1 to 1 events, got 2"


async def test_health_and_reflection(gateway: Gateway) -> None:
    _, channel = gateway
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "recsys.v1.RecommendationService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = set()
    async for response in responses:
        names = {s.name for s in response.list_services_response.service}
    assert {"recsys.v1.RecommendationService", "grpc.health.v1.Health"} <= names


async def test_grpcurl_lists_and_calls_the_service(gateway: Gateway) -> None:
    server, _ = gateway
    grpcurl = REPO / ".tools" / "bin" / "grpcurl"
    binary = str(grpcurl) if grpcurl.exists() else shutil.which("grpcurl")
    assert binary, "grpcurl not found: run `make tools`"
    target = f"127.0.0.1:{server.port}"
    listed = await asyncio.to_thread(
        subprocess.run,
        [binary, "-plaintext", target, "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "recsys.v1.RecommendationService" in listed.stdout.split()
    called = await asyncio.to_thread(
        subprocess.run,
        [
            binary,
            "-plaintext",
            "-d",
            '{"user_id": "17850", "num_items": 3}',
            target,
            "recsys.v1.RecommendationService/Recommend",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert called.stdout.count('"item_id"') == 3


async def test_graceful_shutdown_drains_in_flight_requests(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slow feature reads keep requests in flight long enough to stop the server under them.
    original = EmbeddedFeatureStore.user_features

    async def slow_user_features(
        self: EmbeddedFeatureStore, user_id: str, now: datetime
    ) -> UserFeatures:
        await asyncio.sleep(0.5)
        return await original(self, user_id, now)

    monkeypatch.setattr(EmbeddedFeatureStore, "user_features", slow_user_features)
    # Room for all 20 in flight at once (admission control would shed some otherwise).
    settings = make_settings(
        SERVING__DEFAULT_DEADLINE_MS="5000", SERVING__ADMISSION__MAX_RUNNING="32"
    )
    async with running_gateway(settings) as (server, channel):
        stub = async_stub(channel)
        calls = [
            asyncio.ensure_future(
                stub.Recommend(
                    pb.RecommendRequest(user_id=str(12347 + i), num_items=10), timeout=10
                )
            )
            for i in range(20)
        ]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await server.drain_and_stop(5.0)
        assert 0.1 < time.monotonic() - started < 5.0
        replies = await asyncio.gather(*calls)
        assert all(len(r.recommendations) == 10 and not r.degraded_reasons[1:] for r in replies)
        # Once stopped, new calls are refused, not half-answered.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Recommend(pb.RecommendRequest(user_id="12347"), timeout=2)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_exposures_are_logged_per_arm(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    async with running_gateway(settings) as (_, channel):
        stub = async_stub(channel)
        for i in range(40):
            await stub.Recommend(
                pb.RecommendRequest(user_id=str(12347 + i), num_items=3, request_id=f"exp-{i}"),
                timeout=5,
            )
    # The recorder flushed on shutdown; every response is logged once, with its arm.
    sink = await SqliteExposureSink.open(settings.ab_testing.exposure_log_path)
    try:
        counts = await sink.counts("ranker_v2_vs_v3")
    finally:
        await sink.close()
    assert sum(counts.values()) == 40
    assert set(counts) <= {"control", "treatment"}


async def test_diversity_weight_changes_the_list(make_settings: Callable[..., Settings]) -> None:
    lists = []
    for weight in ("0.0", "0.7"):
        settings = make_settings(MODEL__RERANKER__DIVERSITY_WEIGHT=weight)
        async with running_gateway(settings) as (_, channel):
            reply = await async_stub(channel).Recommend(
                pb.RecommendRequest(user_id="17850", num_items=10), timeout=5
            )
        lists.append(reply.recommendations)
    plain, diverse = lists
    assert [r.item_id for r in plain] != [r.item_id for r in diverse]
    assert len({r.metadata.category for r in diverse}) > len({r.metadata.category for r in plain})


async def test_category_cap(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(MODEL__RERANKER__MAX_PER_CATEGORY="2")
    async with running_gateway(settings) as (_, channel):
        reply = await async_stub(channel).Recommend(
            pb.RecommendRequest(user_id="17850", num_items=12), timeout=5
        )
    categories = [r.metadata.category for r in reply.recommendations]
    assert len(categories) == 12
    assert max(categories.count(c) for c in categories) <= 2


async def test_a_rollback_reaches_the_gateway_without_restart(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    state_file = tmp_path / "experiment_state.json"
    overrides = {
        "AB_TESTING__CONTROLLER__STATE_FILE": str(state_file),
        "AB_TESTING__CONTROLLER__ROUTING_REFRESH_S": "0.2",
    }
    settings = make_settings(**overrides)
    users = [str(12347 + i) for i in range(60)]
    async with running_gateway(settings) as (_, channel):
        stub = async_stub(channel)

        async def arms() -> set[str]:
            replies = [
                await stub.Recommend(pb.RecommendRequest(user_id=u), timeout=5) for u in users
            ]
            return {r.experiment_id for r in replies}

        assert await arms() == {"ranker_v2_vs_v3_control", "ranker_v2_vs_v3_treatment"}
        # The operator's rollback command, as the controller would issue it.
        env = {**os.environ, **{f"RECSYS__{k}": v for k, v in overrides.items()}}
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "ab",
                "experiments",
                "rollback",
                "ranker_v2_vs_v3",
                "--config",
                str(LOCAL_CONFIG),
                "--reason",
                "test",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        await asyncio.sleep(1.0)  # a few routing refreshes
        assert await arms() == {"ranker_v2_vs_v3_control"}
