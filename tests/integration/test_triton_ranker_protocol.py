"""TritonRanker against an in-process GRPCInferenceService that answers as told.

The real tritonserver is exercised in test_tritonserver.py; this server stands in for it only
to produce what a healthy Triton does not on demand: a particular status code, a reply of the
wrong shape, and a look at the metadata the ranker sends. It is Triton's own service
definition (the stub tritonclient ships), served by grpc.aio on a free port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from gateway.stages.rank import RankerFailure, TritonRanker
from triton_models.tritonserver import free_port

pytestmark = pytest.mark.integration

Response = service_pb2.ModelInferResponse


@dataclass
class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Answers ModelInfer with `answer(request)` or aborts with `status`; records calls."""

    status: grpc.StatusCode | None = None
    answer: Callable[[Any], Any] | None = None
    delay_s: float = 0.0
    requests: list[Any] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.requests.append(request)
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.status is not None:
            await context.abort(self.status, "told to fail")
        if self.answer is not None:
            return self.answer(request)
        rows = int(request.inputs[0].shape[0])
        return Response(
            model_name=request.model_name,
            model_version=request.model_version or "7",
            outputs=[Response.InferOutputTensor(name="score", datatype="FP32", shape=[rows, 1])],
            raw_output_contents=[np.full(rows, 0.5, dtype=np.float32).tobytes()],
        )

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request.name != "ranker_v2":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.name}")
        config = model_config_pb2.ModelConfig(
            name="ranker_v2", platform="ensemble", max_batch_size=4096
        )
        return service_pb2.ModelConfigResponse(config=config)

    async def RepositoryIndex(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        Index = service_pb2.RepositoryIndexResponse.ModelIndex
        return service_pb2.RepositoryIndexResponse(
            models=[
                Index(name="ranker_v2", version="1", state="READY"),
                Index(name="ranker_v2", version="2", state="UNAVAILABLE", reason="bad"),
                Index(name="ranker_v2_onnx", version="1", state="READY"),
            ]
        )


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeTriton, str]]:
    servicer = FakeTriton()
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


FEATURES = np.arange(12, dtype=np.float32).reshape(4, 3)


async def test_scores_and_the_version_that_produced_them(fake: tuple[FakeTriton, str]) -> None:
    servicer, url = fake
    ranker = TritonRanker(url)
    try:
        latest = await ranker.score("ranker_v2", 0, FEATURES, 2.0)
        pinned = await ranker.score("ranker_v2", 3, FEATURES, 2.0)
    finally:
        await ranker.close()

    np.testing.assert_array_equal(latest.scores, np.full(4, 0.5, dtype=np.float32))
    assert latest.model_version == "ranker_v2/7"
    assert pinned.model_version == "ranker_v2/3"
    first = servicer.requests[0]
    assert (first.model_name, first.model_version) == ("ranker_v2", "")
    assert servicer.requests[1].model_version == "3"
    sent = np.frombuffer(first.raw_input_contents[0], dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(sent, FEATURES)


async def test_the_callers_trace_continues_into_triton(fake: tuple[FakeTriton, str]) -> None:
    servicer, url = fake
    tracer = TracerProvider().get_tracer("test")
    ranker = TritonRanker(url)
    try:
        with tracer.start_as_current_span("rank") as span:
            await ranker.score("ranker_v2", 1, FEATURES, 2.0)
        await ranker.score("ranker_v2", 1, FEATURES, 2.0)  # no span: nothing to continue
    finally:
        await ranker.close()

    trace_id = format(span.get_span_context().trace_id, "032x")
    traced, untraced = servicer.metadata
    assert traced["traceparent"].split("-")[1] == trace_id
    assert "traceparent" not in untraced


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "RANKER_TIMEOUT"),
        (grpc.StatusCode.UNAVAILABLE, "RANKER_UNAVAILABLE"),
        (grpc.StatusCode.INTERNAL, "RANKER_UNAVAILABLE"),
    ],
)
async def test_triton_errors_become_ranker_failures(
    fake: tuple[FakeTriton, str], status: grpc.StatusCode, reason: str
) -> None:
    servicer, url = fake
    servicer.status = status
    ranker = TritonRanker(url)
    try:
        with pytest.raises(RankerFailure) as failure:
            await ranker.score("ranker_v2", 1, FEATURES, 2.0)
    finally:
        await ranker.close()

    assert failure.value.reason == reason
    assert f"{status.name}: told to fail" in str(failure.value)


async def test_a_misshapen_reply_is_a_failure(fake: tuple[FakeTriton, str]) -> None:
    servicer, url = fake
    servicer.answer = lambda request: Response(
        model_name="ranker_v2",
        model_version="1",
        outputs=[Response.InferOutputTensor(name="score", datatype="FP32", shape=[2, 1])],
        raw_output_contents=[np.zeros(2, dtype=np.float32).tobytes()],
    )
    ranker = TritonRanker(url)
    try:
        with pytest.raises(RankerFailure) as failure:
            await ranker.score("ranker_v2", 1, FEATURES, 2.0)
    finally:
        await ranker.close()

    assert failure.value.reason == "RANKER_UNAVAILABLE"
    assert "misshapen" in str(failure.value)


async def test_repeated_failures_open_the_circuit(fake: tuple[FakeTriton, str]) -> None:
    servicer, url = fake
    servicer.status = grpc.StatusCode.UNAVAILABLE
    ranker = TritonRanker(url, failure_threshold=2, recovery_timeout_s=60.0)
    try:
        for _ in range(2):
            with pytest.raises(RankerFailure):
                await ranker.score("ranker_v2", 1, FEATURES, 2.0)
        with pytest.raises(RankerFailure) as failure:
            await ranker.score("ranker_v2", 1, FEATURES, 2.0)
    finally:
        await ranker.close()

    assert ranker.breaker_open
    assert "circuit open" in str(failure.value)
    assert len(servicer.requests) == 2  # the third call never reached Triton


async def test_late_answers_under_load_do_not_open_the_circuit(
    fake: tuple[FakeTriton, str],
) -> None:
    # Triton is healthy but slower than the budget (a burst of load): each call is answered
    # by the fallback, but every next call still tries Triton, and on time it is used again.
    servicer, url = fake
    servicer.delay_s = 0.05
    ranker = TritonRanker(url, failure_threshold=2, recovery_timeout_s=60.0)
    try:
        for _ in range(4):
            with pytest.raises(RankerFailure) as failure:
                await ranker.score("ranker_v2", 1, FEATURES, 0.005)
            assert failure.value.reason == "RANKER_TIMEOUT"
        assert not ranker.breaker_open
        await ranker.drain(5.0)
        servicer.delay_s = 0.0
        scored = await ranker.score("ranker_v2", 1, FEATURES, 2.0)
    finally:
        await ranker.close()

    assert len(servicer.requests) == 5  # every call reached Triton
    assert scored.scores.shape == (len(FEATURES),)


async def test_model_config_and_ready_versions(fake: tuple[FakeTriton, str]) -> None:
    _, url = fake
    ranker = TritonRanker(url)
    try:
        config = await ranker.model_config("ranker_v2")
        ready = await ranker.ready_versions()
        with pytest.raises(RankerFailure) as failure:
            await ranker.model_config("ranker_v9")
    finally:
        await ranker.close()

    assert config["name"] == "ranker_v2"
    assert config["platform"] == "ensemble"
    assert config["max_batch_size"] == 4096
    assert ready == {"ranker_v2": ["1"], "ranker_v2_onnx": ["1"]}
    assert failure.value.reason == "RANKER_UNAVAILABLE"
    assert "no model ranker_v9" in str(failure.value)


async def test_an_unreachable_triton_is_unavailable() -> None:
    ranker = TritonRanker(f"127.0.0.1:{free_port()}")  # nobody listens there
    try:
        with pytest.raises(RankerFailure) as scoring:
            await ranker.score("ranker_v2", 1, FEATURES, 2.0)
        with pytest.raises(RankerFailure) as index:
            await ranker.ready_versions()
    finally:
        await ranker.close()

    assert scoring.value.reason == "RANKER_UNAVAILABLE"
    assert index.value.reason == "RANKER_UNAVAILABLE"
