"""TritonRanker's HTTP inference path against an in-process server that answers as told.

The real tritonserver is exercised in test_tritonserver.py (scores equal to gRPC's, errors,
overload); this stand-in produces what a healthy Triton does not on demand: error statuses,
replies of the wrong shape, broken or garbled replies, a server that closes connections, and
a look at what the ranker sends. It speaks HTTP/1.1 with Triton's binary tensor extension
over asyncio streams on a free port.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from opentelemetry.sdk.trace import TracerProvider

from gateway.stages.rank import RankerFailure, TritonRanker

pytestmark = pytest.mark.integration

FEATURES = np.arange(12, dtype=np.float32).reshape(4, 3)
GRPC_URL = "127.0.0.1:1"  # control calls only; never made in these tests


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    header: dict[str, Any]
    rows: npt.NDArray[np.float32]


def _reply(status: int, body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def _scores_reply(
    request: Request, scores: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]
) -> bytes:
    outputs = [o["name"] for o in request.header["outputs"]]
    values = [np.ascontiguousarray(scores(request.rows), np.float32) for _ in outputs]
    version = (
        request.path.split("/versions/")[1].split("/")[0] if "/versions/" in request.path else "7"
    )
    header = json.dumps(
        {
            "model_name": request.path.split("/")[3],
            "model_version": version,
            "outputs": [
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": [len(v), 1],
                    "parameters": {"binary_data_size": v.nbytes},
                }
                for name, v in zip(outputs, values, strict=True)
            ],
        }
    ).encode()
    body = header + b"".join(v.tobytes() for v in values)
    return _reply(200, body, f"Inference-Header-Content-Length: {len(header)}\r\n")


@dataclass
class FakeTritonHttp:
    """Answers each infer request with `answer(request)` (raw bytes of the whole reply) or with
    scores of 0.5; `close_after` closes each connection after that many replies, `drop_after`
    after that many replies closes it on the next request instead of answering."""

    answer: Callable[[Request], bytes] | None = None
    delay_s: float = 0.0
    close_after: int = 0
    drop_after: int = 0
    requests: list[Request] = field(default_factory=list)
    connections: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers["content-length"]))
                json_length = int(headers["inference-header-content-length"])
                header = json.loads(body[:json_length])
                shape = header["inputs"][0]["shape"]
                rows = np.frombuffer(body[json_length:], np.float32).reshape(shape)
                request = Request(lines[0].split()[1], headers, header, rows)
                self.requests.append(request)
                if self.drop_after and served >= self.drop_after:
                    return
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                answer = self.answer or (
                    lambda r: _scores_reply(r, lambda x: np.full(len(x), 0.5, np.float32))
                )
                writer.write(answer(request))
                await writer.drain()
                served += 1
                if self.close_after and served >= self.close_after:
                    return
        finally:
            writer.close()


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeTritonHttp, str]]:
    servicer = FakeTritonHttp()
    server = await asyncio.start_server(servicer.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.close()


def _ranker(url: str, **options: object) -> TritonRanker:
    return TritonRanker(GRPC_URL, http_url=url, **options)  # type: ignore[arg-type]


async def test_scores_the_version_and_what_is_sent(fake: tuple[FakeTritonHttp, str]) -> None:
    servicer, url = fake
    servicer.answer = lambda r: _scores_reply(r, lambda rows: rows[:, 0])
    ranker = _ranker(url)
    try:
        latest = await ranker.score("ranker_v2", 0, FEATURES, 2.0, discovery=True)
        pinned = await ranker.score("ranker_v2", 3, FEATURES, 2.0)
    finally:
        await ranker.close()

    assert latest.scores.tolist() == FEATURES[:, 0].tolist()
    assert latest.discovery is not None and latest.discovery.tolist() == FEATURES[:, 0].tolist()
    assert (latest.model_version, pinned.model_version) == ("ranker_v2/7", "ranker_v2/3")
    assert pinned.discovery is None
    first, second = servicer.requests
    assert first.path == "/v2/models/ranker_v2/infer"
    assert second.path == "/v2/models/ranker_v2/versions/3/infer"
    assert first.header["inputs"] == [
        {
            "name": "features",
            "shape": [4, 3],
            "datatype": "FP32",
            "parameters": {"binary_data_size": FEATURES.nbytes},
        }
    ]
    assert [o["name"] for o in first.header["outputs"]] == ["score", "discovery_score"]
    np.testing.assert_array_equal(first.rows, FEATURES)
    assert servicer.connections == 1  # the second call reused the first's connection


async def test_the_callers_trace_continues_into_triton(fake: tuple[FakeTritonHttp, str]) -> None:
    servicer, url = fake
    tracer = TracerProvider().get_tracer("test")
    ranker = _ranker(url)
    try:
        with tracer.start_as_current_span("rank") as span:
            await ranker.score("ranker_v2", 1, FEATURES, 2.0)
        await ranker.score("ranker_v2", 1, FEATURES, 2.0)
    finally:
        await ranker.close()

    traced, untraced = servicer.requests
    assert traced.headers["traceparent"].split("-")[1] == format(
        span.get_span_context().trace_id, "032x"
    )
    assert "traceparent" not in untraced.headers


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (_reply(500, b'{"error":"told to fail"}'), "HTTP 500: told to fail"),
        (_reply(400, b'{"error":"bad shape"}'), "HTTP 400: bad shape"),
        (_reply(503, b"plain text"), "HTTP 503: plain text"),
        (_reply(200, b"{}"), "no Inference-Header-Content-Length"),
        (b"NOT HTTP AT ALL\r\n\r\n", "malformed HTTP reply"),
        (b"", "closed the connection"),
    ],
    ids=["500", "400", "text", "no-header", "garbage", "closed"],
)
async def test_triton_errors_become_ranker_failures(
    fake: tuple[FakeTritonHttp, str], reply: bytes, message: str
) -> None:
    servicer, url = fake
    servicer.answer = lambda request: reply
    servicer.close_after = 1 if not reply else 0
    ranker = _ranker(url)
    try:
        with pytest.raises(RankerFailure) as failure:
            await ranker.score("ranker_v2", 1, FEATURES, 2.0)
        # a good reply after a bad one: the ranker recovers (a new connection where needed)
        servicer.answer = None
        servicer.close_after = 0
        scored = await ranker.score("ranker_v2", 1, FEATURES, 2.0)
    finally:
        await ranker.close()

    assert failure.value.reason == "RANKER_UNAVAILABLE"
    assert failure.value.outage
    assert message in str(failure.value)
    assert scored.scores.tolist() == [0.5] * len(FEATURES)


@pytest.mark.parametrize(
    "outputs",
    [
        [("score", "FP32", 2)],  # too few values
        [("score", "FP64", 4)],  # wrong type
        [("other", "FP32", 4)],  # wrong name
    ],
)
async def test_a_misshapen_reply_is_a_failure(
    fake: tuple[FakeTritonHttp, str], outputs: list[tuple[str, str, int]]
) -> None:
    servicer, url = fake

    def answer(request: Request) -> bytes:
        header = json.dumps(
            {
                "model_version": "1",
                "outputs": [
                    {"name": n, "datatype": t, "parameters": {"binary_data_size": 4 * k}}
                    for n, t, k in outputs
                ],
            }
        ).encode()
        body = header + b"".join(np.zeros(k, np.float32).tobytes() for _, _, k in outputs)
        return _reply(200, body, f"Inference-Header-Content-Length: {len(header)}\r\n")

    servicer.answer = answer
    ranker = _ranker(url)
    try:
        with pytest.raises(RankerFailure, match="misshapen") as failure:
            await ranker.score("ranker_v2", 1, FEATURES, 2.0)
    finally:
        await ranker.close()
    assert failure.value.reason == "RANKER_UNAVAILABLE"


async def test_repeated_failures_open_the_circuit(fake: tuple[FakeTritonHttp, str]) -> None:
    servicer, url = fake
    servicer.answer = lambda request: _reply(500, b'{"error":"down"}')
    ranker = _ranker(url, failure_threshold=2, recovery_timeout_s=60.0)
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


async def test_a_refused_connection_is_an_outage() -> None:
    ranker = _ranker("127.0.0.1:1")
    try:
        with pytest.raises(RankerFailure, match="cannot connect to Triton") as failure:
            await ranker.score("ranker_v2", 1, FEATURES, 2.0)
    finally:
        await ranker.close()
    assert failure.value.reason == "RANKER_UNAVAILABLE" and failure.value.outage


async def test_a_server_closing_connections_gets_new_ones(
    fake: tuple[FakeTritonHttp, str],
) -> None:
    servicer, url = fake
    servicer.close_after = 1  # Triton (or a proxy) ends each connection after one reply
    ranker = _ranker(url)
    try:
        scored = [await ranker.score("ranker_v2", 1, FEATURES, 2.0) for _ in range(3)]
    finally:
        await ranker.close()
    assert all(s.scores.tolist() == [0.5] * len(FEATURES) for s in scored)
    assert servicer.connections == 3


async def test_late_replies_do_not_open_the_circuit_and_the_connection_is_not_reused(
    fake: tuple[FakeTritonHttp, str],
) -> None:
    # Slower than the budget: the requests fail, the calls run to their end (never cut off),
    # and once Triton answers in time it is used again.
    servicer, url = fake
    servicer.delay_s = 0.05
    ranker = _ranker(url, failure_threshold=2, recovery_timeout_s=60.0)
    reasons = []
    try:
        for _ in range(2):
            with pytest.raises(RankerFailure) as failure:
                await ranker.score("ranker_v2", 1, FEATURES, 0.005)
            reasons.append(failure.value.reason)
        assert ranker.abandoned_calls == 2
        assert await ranker.drain(5.0) == 0  # both were answered, not abandoned by Triton
        servicer.delay_s = 0.0
        scored = await ranker.score("ranker_v2", 1, FEATURES, 2.0)
    finally:
        await ranker.close()

    assert reasons == ["RANKER_TIMEOUT", "RANKER_TIMEOUT"]
    assert len(servicer.requests) == 3
    assert scored.scores.shape == (len(FEATURES),)
    assert servicer.connections == 2  # the two late calls ran side by side, then one was reused


async def test_a_kept_connection_dropped_while_idle_is_replaced_and_the_call_sent_again(
    fake: tuple[FakeTritonHttp, str],
) -> None:
    # The server (or a proxy) ends a kept connection just as the next request goes out on it,
    # before any reply: the ranker resends it once on a new connection (inference is
    # idempotent), and the caller sees no failure.
    servicer, url = fake
    servicer.drop_after = 1
    ranker = _ranker(url)
    try:
        scored = [await ranker.score("ranker_v2", 1, FEATURES, 2.0) for _ in range(2)]
    finally:
        await ranker.close()
    assert all(s.scores.tolist() == [0.5] * len(FEATURES) for s in scored)
    assert (len(servicer.requests), servicer.connections) == (3, 2)
