"""Stage 6: score the candidates.

`rank_candidates` is the stage: it scores with the experiment arm's model on Triton
(`TritonRanker`), through the prediction cache, and falls back to `FallbackRanker`, which
keeps the retrieval order (retrieval score blended with popularity) and answers whenever no
trained ranker can (none deployed, Triton down or too slow); responses it produces are
flagged degraded.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from cachetools import TTLCache
from circuitbreaker import CircuitBreaker
from opentelemetry import propagate
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ab.assignment import Assignment
from feature_service.definitions import PurchaseHistory
from feature_service.kernels import order_by_score
from gateway.deadline import Budget
from gateway.prometheus_metrics import Metrics
from gateway.stages.blend import discovery_order
from gateway.stages.features import RankingFeatures
from gateway.stages.types import Candidates, Ranking, RequestContext
from gateway.triton_http import HttpInferEncoder, TritonHttpClient, TritonHttpError
from triton_models.config import RankerSettings

if TYPE_CHECKING:  # the registry asks Triton through this module's TritonRanker
    from gateway.model_registry import ModelRegistry

FALLBACK_MODEL_VERSION = "popularity"
INPUT_NAME = "features"
"""Input tensor of every ranker: FP32 [n, F], columns in the model's feature order."""
OUTPUT_NAME = "score"
"""Output tensor of every ranker: FP32 [n, 1], purchase probability."""
DISCOVERY_OUTPUT_NAME = "discovery_score"
"""Second output of a ranker ensemble that runs a discovery model (`triton_models.discovery`):
FP32 [n, 1], probability of buying the item as a product new to the customer (meaningful for
candidates the customer never bought)."""


class FallbackRanker:
    """Orders candidates without a model: retrieval score blended with popularity.

    Both are min-max scaled within the candidate set and averaged, so a user with an embedding
    gets personal items first among the popular ones, and an unknown user gets popularity.
    """

    def __init__(self, popularity: npt.NDArray[np.float32]) -> None:
        self._log_popularity = np.log1p(popularity).astype(np.float32)

    def rank(self, candidates: Candidates, reason: str = "NO_MODEL") -> Ranking:
        """The fallback ranking, with `reason` saying why it answered."""
        blend = 0.5 * _min_max(candidates.scores) + 0.5 * _min_max(
            self._log_popularity[candidates.positions]
        )
        order = np.argsort(-blend, kind="stable")
        return Ranking(
            Candidates(candidates.positions[order], blend[order]), FALLBACK_MODEL_VERSION, (reason,)
        )


def _min_max(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    if len(values) == 0:
        return values
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.ones_like(values)
    return ((values - low) / (high - low)).astype(np.float32)


class PredictionCache:
    """Recent score vectors (the brief's L1 prediction cache), keyed by everything that
    determines them: model and version, user and the size of their history, context bucket,
    and the exact candidate list. The version in the key is the one the gateway requests, so a
    rollout or an experiment switch can never be answered from another model's scores."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self._cache: TTLCache[tuple[object, ...], npt.NDArray[np.float32]] | None = (
            TTLCache(maxsize=size, ttl=ttl_s) if size > 0 else None
        )

    @staticmethod
    def key(
        model: str,
        version: int,
        user_id: str,
        history_lines: int,
        context: tuple[int, ...],
        positions: npt.NDArray[np.int32],
    ) -> tuple[object, ...]:
        """The cache key of one ranking call."""
        fingerprint = hashlib.blake2b(positions.tobytes(), digest_size=12).digest()
        return (model, version, user_id, history_lines, context, fingerprint)

    @property
    def enabled(self) -> bool:
        """Whether scores are kept at all (`model.ranker.prediction_cache_size` > 0)."""
        return self._cache is not None

    def get(self, key: tuple[object, ...]) -> npt.NDArray[np.float32] | None:
        """Cached scores, or None."""
        return None if self._cache is None else self._cache.get(key)

    def put(self, key: tuple[object, ...], scores: npt.NDArray[np.float32]) -> None:
        """Remembers scores (read-only, so a cached vector cannot be changed by a caller)."""
        if self._cache is not None:
            scores.setflags(write=False)
            self._cache[key] = scores


class RankerFailure(Exception):
    """The ranker could not score; `reason` is the DegradedReason name (without prefix).

    `outage` says whether it speaks of Triton's health (an error, a refused connection, a
    malformed reply: the circuit breaker counts it) or only of this call's load (our time
    budget ran out, too many calls still unanswered: not counted, see `TritonRanker`).
    """

    def __init__(self, reason: str, detail: str, *, outage: bool = True) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.outage = outage


def _is_outage(kind: type[BaseException], error: BaseException) -> bool:
    """The breaker's failure predicate: Triton failures count, load-shaped ones do not."""
    return isinstance(error, RankerFailure) and error.outage


@dataclass(frozen=True, slots=True)
class Scored:
    """Scores aligned with the request's rows and the model version that produced them."""

    scores: npt.NDArray[np.float32]
    model_version: str
    """`<model>/<version>`, e.g. `ranker_v2/1`."""
    discovery: npt.NDArray[np.float32] | None = None
    """The discovery model's scores of the same rows, when they were asked for."""


MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
"""Triton's unary inference RPC (grpc_service.proto, shipped compiled in tritonclient)."""
_CHANNEL_OPTIONS = (
    # What tritonclient's InferenceServerClient sets: Triton's own message limit (INT32_MAX)
    # and gRPC keepalive defaults that never ping an idle connection.
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", False),
    ("grpc.http2.max_pings_without_data", 2),
)
_CONTROL_TIMEOUT_S = 5.0
_MAX_ENCODERS = 64


def _length_delimited(field: Any, length: int) -> bytes:
    """The wire-format key and length of a length-delimited (wire type 2) protobuf field."""
    header = bytearray((field.number << 3 | 2,))  # all field numbers here are below 16
    while length >= 0x80:
        header.append(length & 0x7F | 0x80)
        length >>= 7
    header.append(length)
    return bytes(header)


_INPUTS_FIELD = service_pb2.ModelInferRequest.DESCRIPTOR.fields_by_name["inputs"]
_RAW_INPUT_FIELD = service_pb2.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"]


class InferRequestEncoder:
    """Serialized `ModelInferRequest`s for one model and version, with the least work per call.

    Everything but the row count and the rows is fixed per model and version, so it is built
    with protobuf and serialized once (`prefix`). A call adds the input tensor's description
    (built and serialized by protobuf, a few fields) and the rows as `raw_input_contents`,
    appended as one length-delimited field straight from the array's buffer. Protobuf's wire
    format defines a concatenation of serialized fields as the message holding all of them,
    so Triton parses exactly the message `ModelInferRequest(..., raw_input_contents=
    [rows.tobytes()])` would be, without a message object, a `tobytes()` copy or a second copy
    during serialization (`benchmarks/triton_client_bench.py` measures the difference).
    """

    def __init__(self, model: str, version: int, outputs: Sequence[str] = (OUTPUT_NAME,)) -> None:
        request = service_pb2.ModelInferRequest(
            model_name=model,
            model_version=str(version) if version else "",
            outputs=[
                service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=name)
                for name in outputs
            ],
        )
        self.prefix: bytes = request.SerializeToString()
        """The serialized fields every request to this model and version carries."""

    def encode(self, rows: npt.NDArray[np.float32]) -> bytes:
        """The serialized request scoring `rows` (C-contiguous FP32 `[n, F]`)."""
        return self.encode_parts([rows])

    def encode_parts(self, parts: Sequence[npt.NDArray[np.float32]]) -> bytes:
        """The serialized request scoring the rows of `parts` (C-contiguous FP32 `[n_i, F]`,
        one width) one after the other, as one `[sum n_i, F]` tensor: each part's buffer is
        copied once, straight into the request, with no concatenated array in between."""
        width = parts[0].shape[1]
        rows = sum(part.shape[0] for part in parts)
        tensor = service_pb2.ModelInferRequest.InferInputTensor(
            name=INPUT_NAME, datatype="FP32", shape=(rows, width)
        ).SerializeToString()
        return b"".join(
            (
                self.prefix,
                _length_delimited(_INPUTS_FIELD, len(tensor)),
                tensor,
                _length_delimited(_RAW_INPUT_FIELD, sum(part.nbytes for part in parts)),
                *(part.data for part in parts),
            )
        )


def read_outputs(
    reply: Any, rows: int, names: Sequence[str]
) -> dict[str, npt.NDArray[np.float32]] | None:
    """The named vectors of a `ModelInferResponse` to a `rows`-row request, or None when the
    reply does not hold exactly those FP32 outputs, `rows` values each."""
    if len(reply.raw_output_contents) != len(names) or len(reply.outputs) != len(names):
        return None
    found = {}
    for output, raw in zip(reply.outputs, reply.raw_output_contents, strict=True):
        if output.datatype != "FP32":
            return None
        values = np.frombuffer(raw, dtype=np.float32)
        if values.shape[0] != rows:
            return None
        found[output.name] = values
    return found if sorted(found) == sorted(names) else None


def read_scores(reply: Any, rows: int) -> npt.NDArray[np.float32] | None:
    """The `score` vector of a `ModelInferResponse` to a `rows`-row request, or None when the
    reply does not hold exactly one FP32 output of `rows` values."""
    outputs = read_outputs(reply, rows, (OUTPUT_NAME,))
    return None if outputs is None else outputs[OUTPUT_NAME]


_Key = tuple[str, int, bool]
"""What a Triton call is for: model, version, and whether it asks the discovery output too."""


_E = TypeVar("_E")


def _cached(encoders: dict[_Key, _E], key: _Key, build: Callable[[], _E]) -> _E:
    """`encoders[key]`, built on first use; the cache starts over at `_MAX_ENCODERS` entries
    (versions retired by many rollouts)."""
    encoder = encoders.get(key)
    if encoder is None:
        if len(encoders) >= _MAX_ENCODERS:
            encoders.clear()
        encoder = encoders[key] = build()
    return encoder


def _outputs(discovery: bool) -> tuple[str, ...]:
    return (OUTPUT_NAME, DISCOVERY_OUTPUT_NAME) if discovery else (OUTPUT_NAME,)


@dataclass(eq=False)
class _Batch:
    """Requests for one model and version that go to Triton together, as one call."""

    headers: tuple[tuple[str, str], ...]
    """Trace context of the request that opened the batch (one traceparent per call)."""
    parts: list[npt.NDArray[np.float32]] = field(default_factory=list)
    rows: int = 0
    scored: asyncio.Future[Scored] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    """All rows' scores, or the RankerFailure of the call."""
    call: asyncio.Task[None] | None = None
    """The Triton call, once the batch has been sent."""


class TritonRanker:
    """Scores feature matrices with a Triton model.

    With `http_url`, inference goes to Triton's HTTP endpoint (`gateway.triton_http`: KServe
    v2 with binary tensors on persistent connections), which costs the gateway 0.52-0.60x the
    CPU per call of gRPC's `ModelInfer` and tritonserver 0.84-0.91x
    (`benchmarks/triton_transport.py`). Without it, and for control calls (the repository
    index), requests go to Triton's `GRPCInferenceService` over one long-lived channel through
    the stub that tritonclient ships (`service_pb2_grpc`); `ModelInfer` is then sent
    pre-serialized by an `InferRequestEncoder` and its reply read with `np.frombuffer`.
    tritonclient's `InferInput` / `InferResult` objects cost about ten times the Python work
    per call (`benchmarks/triton_client_bench.py`).

    Batching while busy: at most `max_calls_in_flight` calls per model and version are
    outstanding; requests that arrive meanwhile wait and go together in the next call (up to
    `max_batch_rows` rows, Triton's `max_batch_size`), and each gets its own rows' scores
    back. Both sides' cost is per call, not per row (a gRPC call from Python costs the gateway
    ~0.3 ms of CPU, and Triton's Python backend a similar amount per request), so under load
    one call serves several requests; at low load nothing waits, since a free slot sends at
    once.

    A circuit breaker (the maintained `circuitbreaker` library) opens after
    `failure_threshold` consecutive failures: while open, calls fail at once (microseconds,
    not timeouts) and the gateway answers from the fallback ranker; after
    `recovery_timeout_s` one trial call decides whether to close it again. Only Triton's own
    failures count (errors, refused connections, malformed replies). A request that outruns
    its time budget does not: under a burst of load a few late answers would otherwise
    open the circuit and send every request to the fallback for `recovery_timeout_s` (85-93%
    fallback answers at 32 concurrent callers in the serving-cost benchmark).

    Calls are never cancelled. tritonserver before 24.12 (the local 2.51 among them) can die
    with SIGSEGV when a gRPC infer call is cancelled while its response is being written
    (triton-inference-server/server#7368, fixed by #7840 and #8034); a gateway cancelling
    calls on its deadline under overload took Triton down within seconds. So a request stops
    waiting at its budget and is answered from the fallback, while the call runs to its end
    in the background. At most `max_abandoned_calls` such calls may be outstanding, and a
    model whose every outstanding call has been given up on (Triton stopped answering) is
    not queued for: beyond either, requests fail at once, which bounds the work Triton does
    for nobody and the time requests spend on a Triton that does not answer.
    `call_deadline_s` is a deadline far above any budget, a last resort for a Triton
    that stopped answering altogether.
    """

    def __init__(
        self,
        url: str,
        failure_threshold: int = 5,
        recovery_timeout_s: float = 5.0,
        *,
        max_abandoned_calls: int = 32,
        call_deadline_s: float = 30.0,
        max_calls_in_flight: int = 2,
        max_batch_rows: int = 4096,
        observe_call_requests: Callable[[float], None] | None = None,
        http_url: str | None = None,
    ) -> None:
        """`url`: Triton's gRPC endpoint (host:port); `http_url`: its HTTP endpoint, which
        inference calls then use. `observe_call_requests` is told how many requests each call
        scores."""
        self._channel = grpc.aio.insecure_channel(url, options=_CHANNEL_OPTIONS)
        self._http = TritonHttpClient(http_url) if http_url else None
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        # ModelInfer without a request serializer: the encoder hands over finished bytes.
        self._model_infer: grpc.aio.UnaryUnaryMultiCallable[bytes, Any] = self._channel.unary_unary(
            MODEL_INFER_METHOD,
            request_serializer=None,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
            # as the generated stub registers its methods (types-grpcio lacks the flag)
            _registered_method=True,  # type: ignore[call-arg]
        )
        self._encoders: dict[_Key, InferRequestEncoder] = {}
        self._http_encoders: dict[_Key, HttpInferEncoder] = {}
        self._breaker = CircuitBreaker(
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout_s,
            expected_exception=_is_outage,
            name="triton",
        )
        self._max_abandoned_calls = max_abandoned_calls
        self._call_deadline_s = call_deadline_s
        self._max_calls_in_flight = max_calls_in_flight
        self._max_batch_rows = max_batch_rows
        self._abandoned: set[asyncio.Task[None]] = set()
        self._waiting: dict[_Key, deque[_Batch]] = {}
        self._in_flight: dict[_Key, set[asyncio.Task[None]]] = {}
        self._observe_call_requests = observe_call_requests
        self.calls = 0
        """Calls sent to Triton so far."""
        self.requests = 0
        """Requests those calls scored (`requests / calls`: how many shared a call)."""

    @property
    def abandoned_calls(self) -> int:
        """Calls the gateway stopped waiting for that Triton has not answered yet."""
        return len(self._abandoned)

    def _abandon(self, batch: _Batch) -> None:
        call = batch.call
        if call is not None and not call.done() and call not in self._abandoned:
            self._abandoned.add(call)
            call.add_done_callback(self._abandoned.discard)

    def _encoder(self, key: _Key) -> InferRequestEncoder:
        model, version, discovery = key
        return _cached(
            self._encoders, key, lambda: InferRequestEncoder(model, version, _outputs(discovery))
        )

    async def score(
        self,
        model: str,
        version: int,
        features: npt.NDArray[np.float32],
        timeout_s: float,
        *,
        discovery: bool = False,
    ) -> Scored:
        """Scores `features` (`[n, F]`) with `model` (version 0: the latest Triton serves);
        with `discovery`, also asks the ensemble's discovery model (in the same call).

        Raises:
            RankerFailure: Triton failed, timed out, or the circuit is open.
        """
        if timeout_s <= 0:
            raise RankerFailure("RANKER_TIMEOUT", "no time left for the ranker", outage=False)
        # Refusing while open is ours to do: the library's `call_async` only counts outcomes.
        if self._breaker.opened:
            raise RankerFailure("RANKER_UNAVAILABLE", "circuit open after repeated failures")
        key = (model, version, discovery)
        self._refuse_when_unanswered(key)
        rows = np.ascontiguousarray(features, dtype=np.float32)
        batch, start = self._join(key, rows)
        try:
            async with asyncio.timeout(timeout_s):
                # shield: neither our timeout nor a cancelled caller cancels the shared call
                scored = await asyncio.shield(batch.scored)
        except TimeoutError:
            self._abandon(batch)
            raise RankerFailure(
                "RANKER_TIMEOUT", f"no answer within {timeout_s * 1000:.1f} ms", outage=False
            ) from None
        except asyncio.CancelledError:
            self._abandon(batch)
            raise
        end = start + len(rows)
        return Scored(
            scored.scores[start:end],
            scored.model_version,
            None if scored.discovery is None else scored.discovery[start:end],
        )

    def _refuse_when_unanswered(self, key: _Key) -> None:
        """Fails at once when too many calls nobody waits for are outstanding, or when every
        outstanding call of this model has been given up on (a new request would only queue
        behind calls Triton is not answering)."""
        abandoned = len(self._abandoned)
        in_flight = self._in_flight.get(key)
        stuck = (
            in_flight is not None
            and len(in_flight) >= self._max_calls_in_flight
            and in_flight <= self._abandoned
        )
        if abandoned >= self._max_abandoned_calls or stuck:
            raise RankerFailure(
                "RANKER_UNAVAILABLE",
                f"{abandoned} earlier calls to Triton are still unanswered",
                outage=False,
            )

    def _join(self, key: _Key, rows: npt.NDArray[np.float32]) -> tuple[_Batch, int]:
        """Adds `rows` to the batch now forming for `key` (a new one when it would grow past
        `max_batch_rows`) and sends what a free slot allows; returns the batch and the
        index of the request's first row in it."""
        waiting = self._waiting.setdefault(key, deque())
        if not waiting or waiting[-1].rows + len(rows) > self._max_batch_rows:
            headers: dict[str, str] = {}
            propagate.inject(headers)  # the caller's trace continues into Triton
            waiting.append(_Batch(tuple(headers.items())))
        batch = waiting[-1]
        start = batch.rows
        batch.parts.append(rows)
        batch.rows += len(rows)
        self._send_waiting(key)
        return batch, start

    def _send_waiting(self, key: _Key) -> None:
        waiting = self._waiting[key]
        in_flight = self._in_flight.setdefault(key, set())
        while waiting and len(in_flight) < self._max_calls_in_flight:
            batch = waiting.popleft()
            call = asyncio.ensure_future(self._call(key, batch))
            batch.call = call
            in_flight.add(call)
            self.calls += 1
            self.requests += len(batch.parts)
            if self._observe_call_requests is not None:
                self._observe_call_requests(len(batch.parts))

    async def _call(self, key: _Key, batch: _Batch) -> None:
        """One call to Triton for `batch`; its outcome goes to the batch's waiters."""
        outcome = batch.scored
        try:
            scored: Scored = await self._breaker.call_async(self._infer, key, batch)
        except RankerFailure as exc:
            outcome.set_exception(exc)
        except asyncio.CancelledError:  # the event loop is shutting down
            outcome.set_exception(RankerFailure("RANKER_UNAVAILABLE", "call cancelled"))
            raise
        except Exception as exc:  # a bug here must still answer every waiter
            outcome.set_exception(RankerFailure("RANKER_UNAVAILABLE", repr(exc)))
        else:
            outcome.set_result(scored)
        finally:
            if outcome.done():
                outcome.exception()  # marked retrieved: the waiters may all have gone
            self._in_flight[key].discard(asyncio.current_task())  # type: ignore[arg-type]
            self._send_waiting(key)

    async def _infer(self, key: _Key, batch: _Batch) -> Scored:
        if self._http is not None:
            return await self._infer_http(self._http, key, batch)
        model, _, discovery = key
        request = self._encoder(key).encode_parts(batch.parts)
        try:
            reply = await self._model_infer(
                request, timeout=self._call_deadline_s, metadata=batch.headers or None
            )
        except grpc.aio.AioRpcError as exc:
            timed_out = exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            raise RankerFailure(
                "RANKER_TIMEOUT" if timed_out else "RANKER_UNAVAILABLE",
                f"{exc.code().name}: {exc.details()}",
            ) from exc
        outputs = read_outputs(reply, batch.rows, _outputs(discovery))
        if outputs is None:
            raise RankerFailure("RANKER_UNAVAILABLE", f"{model} returned no or misshapen scores")
        return Scored(
            outputs[OUTPUT_NAME],
            f"{model}/{reply.model_version}",
            outputs.get(DISCOVERY_OUTPUT_NAME),
        )

    async def _infer_http(self, http: TritonHttpClient, key: _Key, batch: _Batch) -> Scored:
        model, version, discovery = key
        encoder = _cached(
            self._http_encoders,
            key,
            lambda: HttpInferEncoder(http.url, model, version, INPUT_NAME, _outputs(discovery)),
        )
        try:
            reply = await http.infer(encoder, batch.parts, self._call_deadline_s, batch.headers)
        except TimeoutError:
            raise RankerFailure(
                "RANKER_TIMEOUT", f"no reply within the {self._call_deadline_s:g} s call deadline"
            ) from None
        except TritonHttpError as exc:
            raise RankerFailure("RANKER_UNAVAILABLE", str(exc)) from exc
        if reply.outputs is None:
            raise RankerFailure("RANKER_UNAVAILABLE", f"{model} returned no or misshapen scores")
        return Scored(
            reply.outputs[OUTPUT_NAME],
            f"{model}/{reply.model_version}",
            reply.outputs.get(DISCOVERY_OUTPUT_NAME),
        )

    async def ready_versions(self) -> dict[str, list[str]]:
        """Model name -> versions Triton reports READY.

        Raises:
            RankerFailure: Triton is unreachable.
        """
        try:
            index = await self._stub.RepositoryIndex(
                service_pb2.RepositoryIndexRequest(), timeout=_CONTROL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise RankerFailure("RANKER_UNAVAILABLE", str(exc.details())) from exc
        ready: dict[str, list[str]] = {}
        for entry in index.models:
            if entry.state == "READY":
                ready.setdefault(entry.name, []).append(entry.version)
        return ready

    async def drain(self, timeout_s: float) -> int:
        """Waits up to `timeout_s` for Triton to answer the abandoned calls; returns how many
        are still unanswered."""
        if self._abandoned:
            await asyncio.wait(set(self._abandoned), timeout=timeout_s)
        return len(self._abandoned)

    async def close(self, drain_timeout_s: float = 5.0) -> None:
        """Closes the channel, after Triton has answered the abandoned calls (closing cancels
        whatever is still in flight)."""
        await self.drain(drain_timeout_s)
        if self._http is not None:
            await self._http.close()
        await self._channel.close()


@dataclass(frozen=True)
class Ranker:
    """The trained-model path of the rank stage; absent until `make models` has built one."""

    triton: TritonRanker
    registry: ModelRegistry
    features: RankingFeatures
    cache: PredictionCache


@dataclass(frozen=True, slots=True)
class RankRequest:
    """What the rank stage needs of one Recommend call."""

    user_id: str
    context: RequestContext
    history: PurchaseHistory
    candidates: Candidates
    """The filtered candidates, in retrieval order."""
    owned: npt.NDArray[np.int32]
    """The customer's past items, which the discovery list leaves out."""
    assignment: Assignment | None
    """The experiment arm (its model and pinned version), None for the default model."""
    wants_discovery: bool
    """Whether the list asked for (DISCOVER, MIXED) needs the discovery order."""


def sorted_median(values: npt.NDArray[np.float32], order: npt.NDArray[np.intp]) -> float:
    """The median of non-empty `values` read off `order`, which sorts them (either way round):
    np.median would sort a copy again, about 30 µs per request."""
    n = len(order)
    return float((values[order[n // 2]] + values[order[(n - 1) // 2]]) / 2.0)


async def rank_candidates(
    request: RankRequest,
    budget: Budget,
    ranker: Ranker | None,
    fallback: FallbackRanker,
    settings: RankerSettings,
    metrics: Metrics,
) -> Ranking:
    """Scores with the arm's model on Triton; the fallback ranker answers when there is no
    model or Triton fails or is too slow.

    A model whose graph has a discovery head is always asked for both outputs, whatever the
    surface: its one execution computes both anyway, every call to one model and version
    then has the same shape, so the gateway's batching merges all of them (asking only
    BUY_AGAIN's calls for `score` split them into two queues), and one cached entry serves
    every surface. The discovery order is built only for a list that uses it.
    """
    candidates = request.candidates
    if ranker is None or len(candidates) == 0:
        return fallback.rank(candidates, "NO_MODEL")
    assignment = request.assignment
    arm_model = assignment.model if assignment is not None else None
    model = arm_model or settings.default_model
    # An arm's pinned version (0: none) names a version of the arm's own model only.
    pinned = assignment.model_version if assignment is not None and arm_model else 0
    version = pinned or ranker.registry.version(model)
    if version is None:
        return fallback.rank(candidates, "NO_MODEL")
    context = request.context
    history = request.history
    with_discovery = ranker.registry.has_discovery(model)
    # With the cache off, no key is hashed and no scores are stacked for it.
    key = (
        PredictionCache.key(
            model,
            version,
            request.user_id,
            len(history.positions),
            (context.device, context.page, hash(context.country), context.time.hour),
            candidates.positions,
        )
        if ranker.cache.enabled
        else None
    )
    cached = ranker.cache.get(key) if key is not None else None
    fresh = cached is None
    discovery: npt.NDArray[np.float32] | None = None
    if cached is not None:
        metrics.prediction_cache_hits.inc()
        # cached as two rows, ranker and discovery scores, for a model with both heads
        scores, discovery = (cached[0], cached[1]) if with_discovery else (cached, None)
    else:
        if key is not None:
            metrics.prediction_cache_misses.inc()
        features = ranker.features.build(request.user_id, history, candidates, context)
        timeout_s = min(budget.remaining(), settings.timeout_ms / 1000.0)
        started = time.perf_counter()
        try:
            scored = await ranker.triton.score(
                model, version, features, timeout_s, discovery=with_discovery
            )
        except RankerFailure as exc:
            metrics.ranker_failures.labels(model, exc.reason).inc()
            return fallback.rank(candidates, exc.reason)
        finally:
            duration = metrics.child(metrics.triton_duration, model)
            duration.observe(time.perf_counter() - started)
        scores, discovery = scored.scores, scored.discovery
        if key is not None:
            ranker.cache.put(key, scores if discovery is None else np.stack([scores, discovery]))
    order = order_by_score(scores)
    if fresh and len(order):
        score = metrics.child(metrics.ranker_score, model)
        score.observe(sorted_median(scores, order))
    discover = (
        discovery_order(candidates, discovery, request.owned)
        if discovery is not None and request.wants_discovery
        else None
    )
    return Ranking(
        Candidates(candidates.positions[order], scores[order]), f"{model}/{version}", (), discover
    )
