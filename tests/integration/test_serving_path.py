"""The serving path against a real tritonserver serving the models `make models` built from the
real data: scores equal an offline onnxruntime run, filters hold, diversity works, and Triton
dying mid-test degrades answers until it is back."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from recsys.v1 import recommendation_pb2 as pb

from gateway.config import Settings
from gateway.resources import Resources, open_resources
from gateway.server import start_server
from gateway.stages.types import Candidates, RequestContext
from infra.local.tritonserver import TritonServer
from tests.conftest import async_stub, running_gateway

pytestmark = pytest.mark.integration
StartTriton = Callable[..., TritonServer]
USER = "17850"
LIGHT_USER = "12356"
"""Two orders of 52 products (USER: 34 orders of 21 products, bought again and again)."""
# Today at 15:30 UTC by the clock the gateway reads (datetime.now(UTC)): always within the day of
# skew it accepts from a client, whatever the date the suite runs on.
CLIENT_TIME = datetime.now(UTC).replace(hour=15, minute=30, second=0, microsecond=0)


@pytest.fixture(scope="session")
def triton(start_tritonserver: StartTriton, models: Path) -> Iterator[TritonServer]:
    server = start_tritonserver(models)
    yield server
    server.stop()


@pytest.fixture
def ranked_settings(
    make_settings: Callable[..., Settings], triton: TritonServer, models: Path
) -> Callable[..., Settings]:
    def make(**overrides: str) -> Settings:
        return make_settings(
            MODEL__REPOSITORY_DIR=str(models),
            MODEL__RANKER__TRITON_GRPC_URL=triton.grpc_url,
            MODEL__RANKER__TRITON_HTTP_URL=triton.http_url,
            MODEL__RANKER__TIMEOUT_MS="2000",
            SERVING__DEFAULT_DEADLINE_MS="5000",
            **overrides,
        )

    return make


def _request(user_id: str = USER, **fields: object) -> pb.RecommendRequest:
    stamp = Timestamp()
    stamp.FromDatetime(CLIENT_TIME)
    context = pb.RequestContext(
        device=pb.DEVICE_MOBILE, page=pb.PAGE_HOME, country="GB", client_time=stamp
    )
    return pb.RecommendRequest(user_id=user_id, context=context, **fields)  # type: ignore[arg-type]


def _offline_scores(
    resources: Resources, models: Path, model_version: str, user_id: str, item_ids: list[str]
) -> npt.NDArray[np.float32]:
    """onnxruntime on the served model file, with features built for the returned items."""
    ranker = resources.recommender.ranker
    index = resources.recommender.candidates.index
    assert ranker is not None and index is not None
    positions = resources.catalogue.positions(item_ids)
    row = index.user_row.get(user_id)
    vector = index.user_vectors[row] if row is not None else np.zeros(index.user_vectors.shape[1])
    candidates = Candidates(positions, (index.item_vectors[positions] @ vector).astype(np.float32))
    context = RequestContext(
        device=pb.DEVICE_MOBILE,
        page=pb.PAGE_HOME,
        locale="",
        country="GB",
        session_id="",
        time=CLIENT_TIME,
    )
    features = ranker.features.build(
        user_id, ranker.features.histories.history(user_id), candidates, context
    )
    model, version = model_version.split("/")
    session = ort.InferenceSession(
        str(models / f"{model}_onnx" / version / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (scores,) = session.run(["score"], {"features": features})
    return np.asarray(scores, dtype=np.float32).reshape(-1)


async def test_scores_come_from_triton_and_equal_onnxruntime(
    ranked_settings: Callable[..., Settings], models: Path, real_user_ids: list[str]
) -> None:
    settings = ranked_settings()
    async with open_resources(settings) as resources:
        server = await start_server(settings, resources)
        try:
            import grpc

            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = async_stub(channel)
                for user_id in [USER, *real_user_ids[:3], "new-visitor-7"]:
                    reply = await stub.Recommend(_request(user_id, num_items=10), timeout=10)
                    assert len(reply.recommendations) == 10
                    assert not reply.degraded, reply.degraded_reasons
                    assert reply.model_version.split("/")[0] in {"ranker_v2", "ranker_v3"}
                    scores = [r.score for r in reply.recommendations]
                    assert scores == sorted(scores, reverse=True)
                    offline = _offline_scores(
                        resources,
                        models,
                        reply.model_version,
                        user_id,
                        [r.item_id for r in reply.recommendations],
                    )
                    np.testing.assert_allclose(scores, offline, atol=1e-4)
        finally:
            await server.drain_and_stop(0)


async def test_filters_hold(ranked_settings: Callable[..., Settings]) -> None:
    async with running_gateway(ranked_settings()) as (_, channel):
        stub = async_stub(channel)
        first = await stub.Recommend(_request(num_items=20), timeout=10)
        top = [r.item_id for r in first.recommendations]
        viewed = top[0]
        stamp = Timestamp()
        stamp.FromDatetime(datetime.now(UTC))
        await stub.RecordEvents(
            pb.RecordEventsRequest(
                events=[
                    pb.UserEvent(
                        event_id="serving-view-1",
                        type=pb.EVENT_TYPE_PRODUCT_VIEW,
                        user_id=USER,
                        item_id=viewed,
                        timestamp=stamp,
                    )
                ]
            ),
            timeout=10,
        )
        reply = await stub.Recommend(_request(num_items=20, exclude_item_ids=top[1:4]), timeout=10)
    returned = {r.item_id for r in reply.recommendations}
    assert len(returned) == 20
    assert viewed not in returned  # recently viewed
    assert not returned & set(top[1:4])  # excluded
    import pyarrow.parquet as pq

    from tests.conftest import REPO

    items = pq.read_table(REPO / "build" / "data" / "items.parquet").to_pandas()
    in_stock = dict(zip(items["item_id"], items["available"], strict=True))
    assert all(in_stock[i] for i in returned)  # no out-of-stock item


async def test_diversity_changes_the_ranked_list(ranked_settings: Callable[..., Settings]) -> None:
    lists = []
    for weight in ("0.0", "0.8"):
        async with running_gateway(ranked_settings(MODEL__RERANKER__DIVERSITY_WEIGHT=weight)) as (
            _,
            channel,
        ):
            reply = await async_stub(channel).Recommend(_request(num_items=10), timeout=10)
            assert not reply.degraded
            lists.append([r.item_id for r in reply.recommendations])
    assert lists[0] != lists[1]


async def test_triton_down_degrades_then_recovers(
    start_tritonserver: StartTriton, models: Path, make_settings: Callable[..., Settings]
) -> None:
    own = start_tritonserver(models)
    settings = make_settings(
        MODEL__REPOSITORY_DIR=str(models),
        MODEL__RANKER__TRITON_GRPC_URL=own.grpc_url,
        MODEL__RANKER__TRITON_HTTP_URL=own.http_url,
        MODEL__RANKER__TIMEOUT_MS="2000",
        MODEL__RANKER__RECOVERY_TIMEOUT_S="1",
        MODEL__RANKER__PREDICTION_CACHE_SIZE="0",
        SERVING__DEFAULT_DEADLINE_MS="5000",
    )
    async with running_gateway(settings) as (_, channel):
        stub = async_stub(channel)
        assert not (await stub.Recommend(_request(), timeout=10)).degraded
        own.stop()
        for _ in range(8):  # more than the breaker's threshold: it opens
            started = time.monotonic()
            reply = await stub.Recommend(_request(), timeout=10)
            assert reply.degraded and len(reply.recommendations) == 10
            assert reply.model_version == "popularity"
            assert list(reply.degraded_reasons) == [pb.DEGRADED_REASON_RANKER_UNAVAILABLE]
        # With the circuit open a degraded answer costs no Triton timeout.
        assert time.monotonic() - started < 0.5
        restarted = TritonServer(dataclasses.replace(own.options), startup_timeout_s=120)
        restarted.start()
        try:
            deadline = time.monotonic() + 60
            while True:
                reply = await stub.Recommend(_request(), timeout=10)
                if not reply.degraded:
                    break
                assert time.monotonic() < deadline, "no recovery within 60 s"
                await asyncio.sleep(0.5)
            assert reply.model_version.startswith("ranker_v")
        finally:
            restarted.stop()


def _onnx_scores(
    resources: Resources, models: Path, onnx_model: str, user_id: str, item_ids: list[str]
) -> npt.NDArray[np.float32]:
    """onnxruntime on the newest version of `onnx_model`, features built for `item_ids`."""
    ranker = resources.recommender.ranker
    index = resources.recommender.candidates.index
    assert ranker is not None and index is not None
    positions = resources.catalogue.positions(item_ids)
    row = index.user_row[user_id]
    candidates = Candidates(
        positions, (index.item_vectors[positions] @ index.user_vectors[row]).astype(np.float32)
    )
    context = RequestContext(
        device=pb.DEVICE_MOBILE,
        page=pb.PAGE_HOME,
        locale="",
        country="GB",
        session_id="",
        time=CLIENT_TIME,
    )
    features = ranker.features.build(
        user_id, ranker.features.histories.history(user_id), candidates, context
    )
    version = max(int(p.name) for p in (models / onnx_model).iterdir() if p.name.isdigit())
    session = ort.InferenceSession(
        str(models / onnx_model / str(version) / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (scores,) = session.run(["score"], {"features": features})
    return np.asarray(scores, dtype=np.float32).reshape(-1)


async def test_surfaces_each_in_one_triton_call(
    ranked_settings: Callable[..., Settings], models: Path
) -> None:
    # No prediction cache: every Recommend must reach Triton, and exactly once.
    settings = ranked_settings(MODEL__RANKER__PREDICTION_CACHE_SIZE="0")
    # The lists themselves, outside the shipped experiment on the default list (its control
    # arm serves BUY_AGAIN for MIXED; tests/integration/experiments covers it).
    ab = settings.ab_testing
    ranker_only = tuple(e for e in ab.experiments if e.layer != "surface")
    settings = settings.model_copy(
        update={"ab_testing": ab.model_copy(update={"experiments": ranker_only})}
    )
    async with open_resources(settings) as resources:
        server = await start_server(settings, resources)
        try:
            import grpc

            ranker = resources.recommender.ranker
            assert ranker is not None and ranker.registry.has_discovery("ranker_v2")
            owned = set(
                resources.catalogue.item_ids[
                    ranker.features.histories.purchases(USER).recent_items
                ].tolist()
            )
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = async_stub(channel)
                replies = {}
                for surface in (pb.SURFACE_BUY_AGAIN, pb.SURFACE_DISCOVER, pb.SURFACE_MIXED):
                    calls = ranker.triton.calls
                    reply = await stub.Recommend(
                        _request(num_items=10, surface=surface), timeout=10
                    )
                    assert ranker.triton.calls == calls + 1
                    assert len(reply.recommendations) == 10
                    assert not reply.degraded, reply.degraded_reasons
                    replies[surface] = reply
                unset = await stub.Recommend(_request(num_items=10), timeout=10)
                light_owned = set(
                    resources.catalogue.item_ids[
                        ranker.features.histories.purchases(LIGHT_USER).recent_items
                    ].tolist()
                )
                light_new = {}
                for surface in (pb.SURFACE_BUY_AGAIN, pb.SURFACE_MIXED):
                    calls = ranker.triton.calls
                    reply = await stub.Recommend(
                        _request(LIGHT_USER, num_items=10, surface=surface), timeout=10
                    )
                    assert ranker.triton.calls == calls + 1
                    listed = {r.item_id for r in reply.recommendations}
                    light_new[surface] = len(listed - light_owned)
        finally:
            await server.drain_and_stop(0)
        model, _ = replies[pb.SURFACE_MIXED].model_version.split("/")
        slots = settings.model.reranker.discovery_slots
        for surface, onnx_model, new_at_least in (
            (pb.SURFACE_BUY_AGAIN, f"{model}_onnx", 0),
            (pb.SURFACE_DISCOVER, "discovery_v1_onnx", 10),
            (pb.SURFACE_MIXED, f"{model}_onnx", 0),
        ):
            items = [r.item_id for r in replies[surface].recommendations]
            scores = [r.score for r in replies[surface].recommendations]
            assert scores == sorted(scores, reverse=True)
            assert len(set(items) - owned) >= new_at_least, (surface, items)
            expected = _onnx_scores(resources, models, onnx_model, USER, items)
            np.testing.assert_allclose(scores, expected, atol=1e-4)
        # The customer re-orders a lot: today's list is mostly own items, and MIXED keeps it
        # (discovery_slots_for: each re-order is likelier to sell than a new pick is worth),
        # while the light buyer's MIXED gives a new product a slot that today's list does not.
        buy_again = [r.item_id for r in replies[pb.SURFACE_BUY_AGAIN].recommendations]
        assert len(set(buy_again) - owned) < slots
        mixed = [r.item_id for r in replies[pb.SURFACE_MIXED].recommendations]
        assert sorted(mixed) == sorted(buy_again)
        assert light_new[pb.SURFACE_MIXED] > light_new[pb.SURFACE_BUY_AGAIN]
        # An old client (no surface) gets MIXED.
        assert [r.item_id for r in unset.recommendations] == [
            r.item_id for r in replies[pb.SURFACE_MIXED].recommendations
        ]


async def test_unknown_surface_is_invalid_argument(
    ranked_settings: Callable[..., Settings],
) -> None:
    import grpc

    async with running_gateway(ranked_settings()) as (_, channel):
        request = _request()
        request.surface = 9  # type: ignore[assignment]  # a value this server does not know
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await async_stub(channel).Recommend(request, timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "surface: unknown Surface value 9" in str(caught.value.details())
