"""Stage 6: score the candidates.

`TritonRanker` scores with the experiment arm's model on Triton. `PopularityRanker` is the
fallback: it keeps the retrieval order (retrieval score blended with popularity) and answers
whenever no trained ranker can (none deployed, Triton down or too slow); responses it
produces are flagged degraded.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as triton_grpc
from cachetools import TTLCache
from circuitbreaker import CircuitBreaker, CircuitBreakerError
from opentelemetry import propagate
from tritonclient.grpc import InferResult
from tritonclient.utils import InferenceServerException

from gateway.stages.types import Candidates, Ranking

FALLBACK_MODEL_VERSION = "popularity"
INPUT_NAME = "features"
"""Input tensor of every ranker: FP32 [n, F], columns in the model's feature order."""
OUTPUT_NAME = "score"
"""Output tensor of every ranker: FP32 [n, 1], purchase probability."""


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

    def get(self, key: tuple[object, ...]) -> npt.NDArray[np.float32] | None:
        """Cached scores, or None."""
        return None if self._cache is None else self._cache.get(key)

    def put(self, key: tuple[object, ...], scores: npt.NDArray[np.float32]) -> None:
        """Remembers scores (read-only, so a cached vector cannot be changed by a caller)."""
        if self._cache is not None:
            scores.setflags(write=False)
            self._cache[key] = scores


class RankerFailure(Exception):
    """The ranker could not score; `reason` is the DegradedReason name (without prefix)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Scored:
    """Scores aligned with the request's rows and the model version that produced them."""

    scores: npt.NDArray[np.float32]
    model_version: str
    """`<model>/<version>`, e.g. `ranker_v2/1`."""


class TritonRanker:
    """Scores feature matrices with a Triton model over one long-lived gRPC channel.

    A circuit breaker (the maintained `circuitbreaker` library) opens after
    `failure_threshold` consecutive failures: while open, calls fail at once (microseconds,
    not timeouts) and the gateway answers from the fallback ranker; after
    `recovery_timeout_s` one trial call decides whether to close it again.

    Calls are never cancelled. tritonserver before 24.12 (the local 2.51 among them) can die
    with SIGSEGV when a gRPC infer call is cancelled while its response is being written
    (triton-inference-server/server#7368, fixed by #7840 and #8034); a gateway cancelling
    calls on its deadline under overload took Triton down within seconds. So the gateway
    stops waiting at the budget and answers from the fallback, while the call runs to its
    end in the background. At most `max_abandoned_calls` such calls may be outstanding;
    beyond them calls fail at once, which bounds the work Triton does for nobody.
    `call_deadline_s` is a gRPC deadline far above any budget, a last resort for a Triton
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
    ) -> None:
        self._client = triton_grpc.InferenceServerClient(url)
        self._breaker = CircuitBreaker(
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout_s,
            expected_exception=RankerFailure,
            name="triton",
        )
        self._max_abandoned_calls = max_abandoned_calls
        self._call_deadline_s = call_deadline_s
        self._abandoned: set[asyncio.Future[InferResult]] = set()

    @property
    def breaker_open(self) -> bool:
        """Whether calls are currently refused without trying Triton."""
        return bool(self._breaker.opened)

    @property
    def abandoned_calls(self) -> int:
        """Calls the gateway stopped waiting for that Triton has not answered yet."""
        return len(self._abandoned)

    def _abandon(self, call: asyncio.Future[InferResult]) -> None:
        self._abandoned.add(call)
        call.add_done_callback(self._forget)

    def _forget(self, call: asyncio.Future[InferResult]) -> None:
        self._abandoned.discard(call)
        if not call.cancelled():
            call.exception()  # nobody awaits it any more: retrieved, so asyncio does not log it

    async def score(
        self, model: str, version: int, features: npt.NDArray[np.float32], timeout_s: float
    ) -> Scored:
        """Scores `features` (`[n, F]`) with `model` (version 0: the latest Triton serves).

        Raises:
            RankerFailure: Triton failed, timed out, or the circuit is open.
        """
        if timeout_s <= 0:
            raise RankerFailure("RANKER_TIMEOUT", "no time left for the ranker")
        try:
            result: Scored = await self._breaker.call_async(
                self._infer, model, version, features, timeout_s
            )
        except CircuitBreakerError as exc:
            raise RankerFailure(
                "RANKER_UNAVAILABLE", "circuit open after repeated failures"
            ) from exc
        return result

    async def _infer(
        self, model: str, version: int, features: npt.NDArray[np.float32], timeout_s: float
    ) -> Scored:
        rows = np.ascontiguousarray(features, dtype=np.float32)
        request = triton_grpc.InferInput(INPUT_NAME, list(rows.shape), "FP32")
        request.set_data_from_numpy(rows)
        if len(self._abandoned) >= self._max_abandoned_calls:
            raise RankerFailure(
                "RANKER_UNAVAILABLE",
                f"{len(self._abandoned)} earlier calls to Triton are still unanswered",
            )
        headers: dict[str, str] = {}
        propagate.inject(headers)  # the caller's trace continues into Triton
        call = asyncio.ensure_future(
            self._client.infer(
                model,
                [request],
                model_version=str(version) if version else "",
                outputs=[triton_grpc.InferRequestedOutput(OUTPUT_NAME)],
                client_timeout=self._call_deadline_s,
                headers=headers,
            )
        )
        try:
            async with asyncio.timeout(timeout_s):
                # shield: neither our timeout nor a cancelled caller cancels the gRPC call
                result = await asyncio.shield(call)
        except TimeoutError:
            self._abandon(call)
            raise RankerFailure(
                "RANKER_TIMEOUT", f"no answer within {timeout_s * 1000:.1f} ms"
            ) from None
        except asyncio.CancelledError:
            self._abandon(call)
            raise
        except InferenceServerException as exc:
            timed_out = "DEADLINE_EXCEEDED" in str(exc.status())
            raise RankerFailure(
                "RANKER_TIMEOUT" if timed_out else "RANKER_UNAVAILABLE", str(exc.message())
            ) from exc
        scores = result.as_numpy(OUTPUT_NAME)
        if scores is None or scores.shape[0] != rows.shape[0]:
            raise RankerFailure("RANKER_UNAVAILABLE", f"{model} returned no or misshapen scores")
        served = result.get_response().model_version
        return Scored(scores.reshape(-1).astype(np.float32, copy=False), f"{model}/{served}")

    async def model_config(self, model: str) -> dict[str, Any]:
        """Triton's configuration of `model` as JSON.

        Raises:
            RankerFailure: Triton is unreachable or does not serve `model`.
        """
        try:
            reply = await self._client.get_model_config(model, as_json=True, client_timeout=5.0)
        except InferenceServerException as exc:
            raise RankerFailure("RANKER_UNAVAILABLE", str(exc.message())) from exc
        config: dict[str, Any] = reply["config"]
        return config

    async def ready_versions(self) -> dict[str, list[str]]:
        """Model name -> versions Triton reports READY.

        Raises:
            RankerFailure: Triton is unreachable.
        """
        try:
            index = await self._client.get_model_repository_index(as_json=True, client_timeout=5.0)
        except InferenceServerException as exc:
            raise RankerFailure("RANKER_UNAVAILABLE", str(exc.message())) from exc
        ready: dict[str, list[str]] = {}
        for entry in index.get("models", []):
            if entry.get("state") == "READY":
                ready.setdefault(entry["name"], []).append(str(entry.get("version", "")))
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
        await self._client.close()
