"""Traces: one span per request continuing the caller's trace, one child span per stage."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from recsys.v1 import recommendation_pb2 as pb

from gateway.config import Settings
from tests.conftest import async_stub, running_gateway

pytestmark = pytest.mark.integration

STAGES = ["assign", "features", "candidates", "filter", "rank", "rerank", "respond"]
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


async def test_stage_spans_under_the_request_span(make_settings: Callable[..., Settings]) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # default sampler: always on
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with running_gateway(make_settings(), tracer_provider=provider) as (_, channel):
        await async_stub(channel).Recommend(
            pb.RecommendRequest(user_id="17850", num_items=5),
            metadata=(("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"),),
            timeout=5,
        )
        with pytest.raises(Exception, match="num_items"):
            await async_stub(channel).Recommend(
                pb.RecommendRequest(user_id="17850", num_items=500), timeout=5
            )
    spans = exporter.get_finished_spans()
    requests = [s for s in spans if s.name == "Recommend"]
    assert len(requests) == 2
    ok, invalid = sorted(requests, key=lambda s: s.start_time or 0)

    # The request span continues the caller's trace.
    assert format(ok.context.trace_id, "032x") == CALLER_TRACE
    assert ok.parent is not None and format(ok.parent.span_id, "016x") == CALLER_SPAN
    assert ok.kind == trace.SpanKind.SERVER
    assert ok.attributes is not None
    assert ok.attributes["rpc.grpc.status_code"] == 0
    assert ok.attributes["recsys.model_version"] == "popularity"
    retrieved = ok.attributes["recsys.candidates.retrieved"]
    assert isinstance(retrieved, int) and retrieved >= 500
    assert str(ok.attributes["recsys.experiment_id"]).startswith("ranker_v2_vs_v3_")

    children = [s for s in spans if s.parent is not None and s.parent.span_id == ok.context.span_id]
    assert sorted(s.name for s in children) == sorted(STAGES)
    assert all(s.context.trace_id == ok.context.trace_id for s in children)

    # A rejected request is traced too, with its status code and the reason.
    assert invalid.attributes is not None
    assert invalid.attributes["rpc.grpc.status_code"] == 3
    assert "num_items" in str(invalid.attributes["recsys.error"])
