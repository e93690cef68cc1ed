"""Structured logs: one JSON line per logged request with request id, hashed user, variant and
latency; errors always logged; trace ids on every line."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
from opentelemetry.sdk.trace import TracerProvider
from recsys.v1 import recommendation_pb2 as pb

from gateway.config import Settings
from gateway.json_logging import configure_logging
from gateway.servicer import hash_user
from tests.conftest import async_stub, running_gateway

pytestmark = pytest.mark.integration


async def test_request_lines(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(MONITORING__REQUEST_LOG_SAMPLE_RATIO="1.0")
    caplog.set_level(logging.INFO, logger="gateway")
    async with running_gateway(settings) as (_, channel):
        stub = async_stub(channel)
        await stub.Recommend(pb.RecommendRequest(user_id="17850", request_id="log-1"), timeout=5)
        with pytest.raises(Exception, match="num_items"):
            await stub.Recommend(pb.RecommendRequest(user_id="17850", num_items=0), timeout=5)
    (line,) = [r for r in caplog.records if r.getMessage() == "recommend"]
    assert line.request_id == "log-1"  # type: ignore[attr-defined]
    assert line.user == hash_user("17850") and "17850" not in line.user  # type: ignore[attr-defined]
    assert line.experiment_id.startswith("ranker_v2_vs_v3_")  # type: ignore[attr-defined]
    assert line.latency_ms > 0  # type: ignore[attr-defined]
    refused = [r for r in caplog.records if r.getMessage() == "Recommend refused"]
    assert refused and refused[0].code == "INVALID_ARGUMENT"  # type: ignore[attr-defined]


def test_json_lines_carry_trace_ids(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO")
        tracer = TracerProvider().get_tracer("test")
        with tracer.start_as_current_span("request") as span:
            logging.getLogger("gateway.test").info("inside", extra={"request_id": "r-9"})
        logging.getLogger("gateway.test").warning("outside")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    inside, outside = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert inside["message"] == "inside" and inside["request_id"] == "r-9"
    assert inside["level"] == "INFO" and inside["logger"] == "gateway.test"
    assert inside["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert outside["trace_id"] == "" and outside["level"] == "WARNING"
