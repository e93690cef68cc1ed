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
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.stages.rank import RankerFailure, TritonRanker
from infra.local.ports import free_port

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

    assert "circuit open" in str(failure.value)
    assert len(servicer.requests) == 2  # the third call never reached Triton


async def test_late_answers_under_load_do_not_open_the_circuit(
    fake: tuple[FakeTriton, str],
) -> None:
    # Triton is healthy but slower than the budget (a burst of load): the requests are
    # answered by the fallback, once both call slots hold calls nobody waits for the next is
    # refused at once, and none of it opens the circuit: once Triton answers it is used again.
    servicer, url = fake
    servicer.delay_s = 0.05
    ranker = TritonRanker(url, failure_threshold=2, recovery_timeout_s=60.0)
    reasons = []
    try:
        for _ in range(4):
            with pytest.raises(RankerFailure) as failure:
                await ranker.score("ranker_v2", 1, FEATURES, 0.005)
            reasons.append(failure.value.reason)
        assert "2 earlier calls to Triton are still unanswered" in str(failure.value)
        await ranker.drain(5.0)
        servicer.delay_s = 0.0
        scored = await ranker.score("ranker_v2", 1, FEATURES, 2.0)
    finally:
        await ranker.close()

    assert reasons == [
        "RANKER_TIMEOUT",
        "RANKER_TIMEOUT",
        "RANKER_UNAVAILABLE",
        "RANKER_UNAVAILABLE",
    ]
    assert len(servicer.requests) == 3  # the two late calls, then the one on time
    assert scored.scores.shape == (len(FEATURES),)


def _first_column(raw: bytes) -> bytes:
    """Scores a fake model gives: each row's first feature."""
    rows = np.frombuffer(raw, dtype=np.float32).reshape(-1, FEATURES.shape[1])
    return np.ascontiguousarray(rows[:, 0]).tobytes()


async def test_requests_that_arrive_while_calls_are_out_share_the_next_call(
    fake: tuple[FakeTriton, str],
) -> None:
    # One call slot: the first request goes alone, the five that arrive while it is out go
    # together in one call, and each gets its own rows' scores back.
    servicer, url = fake
    servicer.delay_s = 0.05
    servicer.answer = lambda request: Response(
        model_name=request.model_name,
        model_version="7",
        outputs=[Response.InferOutputTensor(name="score", datatype="FP32")],
        raw_output_contents=[_first_column(request.raw_input_contents[0])],
    )
    ranker = TritonRanker(url, max_calls_in_flight=1, max_batch_rows=4096)
    rng = np.random.default_rng(5)
    requests = [
        rng.normal(size=(n, FEATURES.shape[1])).astype(np.float32) for n in (3, 4, 1, 6, 2, 5)
    ]
    try:
        first = asyncio.create_task(ranker.score("ranker_v2", 1, requests[0], 2.0))
        await asyncio.sleep(0.01)
        rest = [ranker.score("ranker_v2", 1, rows, 2.0) for rows in requests[1:]]
        results = await asyncio.gather(first, *rest)
    finally:
        await ranker.close()

    assert [int(r.inputs[0].shape[0]) for r in servicer.requests] == [3, 18]
    assert (ranker.calls, ranker.requests) == (2, 6)
    for rows, scored in zip(requests, results, strict=True):
        # The fake scores each row with its first feature: every request got its own rows.
        assert scored.scores.tolist() == rows[:, 0].tolist()
        assert scored.model_version == "ranker_v2/7"


async def test_a_batch_is_cut_at_max_batch_rows(fake: tuple[FakeTriton, str]) -> None:
    servicer, url = fake
    servicer.delay_s = 0.05
    ranker = TritonRanker(url, max_calls_in_flight=1, max_batch_rows=10)
    rows = np.ones((4, FEATURES.shape[1]), dtype=np.float32)
    try:
        first = asyncio.create_task(ranker.score("ranker_v2", 1, rows, 2.0))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, *(ranker.score("ranker_v2", 1, rows, 2.0) for _ in range(5)))
    finally:
        await ranker.close()

    # 4 alone, then the five that waited: 4 + 4 (a third would make 12 > 10), 4 + 4, 4.
    assert [int(r.inputs[0].shape[0]) for r in servicer.requests] == [4, 8, 8, 4]


async def test_ready_versions(fake: tuple[FakeTriton, str]) -> None:
    _, url = fake
    ranker = TritonRanker(url)
    try:
        ready = await ranker.ready_versions()
    finally:
        await ranker.close()

    assert ready == {"ranker_v2": ["1"], "ranker_v2_onnx": ["1"]}


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
