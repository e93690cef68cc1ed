"""Property-based bad input against a real gateway process: every request either succeeds
with a well-formed answer or fails with INVALID_ARGUMENT and a message naming a field; never a
crash, a hang or another status."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recsys.v1 import recommendation_pb2 as pb
from recsys.v1 import recommendation_pb2_grpc as pb_grpc

from infra.local.ports import free_port
from tests.conftest import LOCAL_CONFIG, REPO

pytestmark = pytest.mark.integration
FIELDS = (
    "user_id",
    "num_items",
    "context",
    "exclude_item_ids",
    "request_id",
    "surface",
    "request",
    "events",
)
PROFILE = settings(
    max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(scope="module")
def channel(build_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    """A gateway process (no rate limit, so the fuzzer is never throttled) and a channel to it."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "RECSYS__SERVING__PORT": str(port),
            "RECSYS__SERVING__RATE_LIMIT": "",
            "RECSYS__MONITORING__METRICS__ENABLED": "false",
            "RECSYS__MODEL__ARTIFACTS_DIR": str(build_dir),
            "RECSYS__AB_TESTING__EXPOSURE_LOG_PATH": str(
                tmp_path_factory.mktemp("fuzz-exposures") / "exposures.sqlite3"
            ),
            "RECSYS__FEATURE_STORE__EMBEDDED__EVENT_LOG_PATH": str(
                tmp_path_factory.mktemp("fuzz") / "events.sqlite3"
            ),
        }
    )
    log = tmp_path_factory.mktemp("fuzz-log") / "gateway.log"
    log_file = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.main", "--config", str(LOCAL_CONFIG)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while True:
            try:
                health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                break
            except grpc.RpcError:
                assert process.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "gateway not ready within 60 s"
                time.sleep(0.2)
        yield channel
        assert process.poll() is None, "the gateway crashed during fuzzing"
    finally:
        channel.close()
        process.terminate()
        process.wait(timeout=30)
        log_file.close()
        assert "Traceback" not in log.read_text(), log.read_text()[-2000:]


def _check(error: grpc.RpcError) -> None:
    """The call failed with INVALID_ARGUMENT naming one of the request's fields."""
    code, details = error.code(), error.details() or ""
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    field = details.split(":")[0].split("[")[0].split(".")[0]
    assert field in FIELDS, details


texts = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=140),
    st.sampled_from(["17850", " 17850", "", "\x00", "a\u200bb", "x" * 129]),
)
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
timestamps = st.builds(
    Timestamp, seconds=st.integers(-(2**40), 2**40), nanos=st.integers(-(2**31), 2**31 - 1)
)


@given(
    user_id=texts,
    num_items=st.one_of(st.none(), int32),
    device=int32,
    page=int32,
    locale=texts,
    country=texts,
    session_id=texts,
    client_time=st.one_of(st.none(), timestamps),
    exclude=st.lists(texts, max_size=600),
    request_id=texts,
    surface=st.one_of(st.integers(0, 3), int32),
)
@PROFILE
def test_recommend_never_fails_unexpectedly(
    channel: grpc.Channel,
    user_id: str,
    num_items: int | None,
    device: int,
    page: int,
    locale: str,
    country: str,
    session_id: str,
    client_time: Timestamp | None,
    exclude: list[str],
    request_id: str,
    surface: int,
) -> None:
    context = pb.RequestContext(
        device=pb.Device.ValueType(device),
        page=pb.Page.ValueType(page),
        locale=locale,
        country=country,
        session_id=session_id,
    )
    if client_time is not None:
        context.client_time.CopyFrom(client_time)
    request = pb.RecommendRequest(
        user_id=user_id,
        context=context,
        exclude_item_ids=exclude,
        request_id=request_id,
        surface=pb.Surface.ValueType(surface),
    )
    if num_items is not None:
        request.num_items = num_items
    try:
        reply = pb_grpc.RecommendationServiceStub(channel).Recommend(request, timeout=10)
    except grpc.RpcError as error:
        _check(error)
        return
    assert len(reply.recommendations) == (10 if num_items is None else num_items)
    assert not {r.item_id for r in reply.recommendations} & set(exclude)


events = st.builds(
    pb.UserEvent,
    event_id=texts,
    type=int32,
    user_id=texts,
    item_id=texts,
    request_id=texts,
    timestamp=st.one_of(st.none(), timestamps, st.just(Timestamp(seconds=int(time.time())))),
    quantity=int32,
    revenue=st.floats(allow_nan=True, allow_infinity=True),
    currency=st.sampled_from(["GBP", "", "gbp", "EURO"]),
    position=int32,
)


@given(batch=st.lists(events, max_size=40))
@PROFILE
def test_record_events_never_fails_unexpectedly(
    channel: grpc.Channel, batch: list[pb.UserEvent]
) -> None:
    try:
        reply = pb_grpc.RecommendationServiceStub(channel).RecordEvents(
            pb.RecordEventsRequest(events=batch), timeout=10
        )
    except grpc.RpcError as error:
        _check(error)
        return
    assert reply.accepted + reply.duplicates == len(batch)
    assert all(math.isfinite(e.revenue) and e.revenue >= 0 for e in batch)


@given(payload=st.binary(max_size=2000))
@PROFILE
def test_arbitrary_bytes(channel: grpc.Channel, payload: bytes) -> None:
    raw: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        "/recsys.v1.RecommendationService/Recommend"
    )
    try:
        raw(payload, timeout=10)
    except grpc.RpcError as error:
        _check(error)
