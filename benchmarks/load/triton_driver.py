"""Drive Triton alone: `concurrency` asyncio workers sending the gateway's ranking batch.

Every call sends one request of `rows` candidates (the gateway ranks 500) with `features`
FP32 [rows, F] and reads `score`, through `tritonclient.grpc.aio` on one channel, like the
gateway. F comes from the model's config (`get_model_config`). Triton's own statistics
(`get_inference_statistics`) give the achieved batch size: `inference_count` counts rows,
`execution_count` counts model executions, so rows / executions over the run, divided by
`rows`, is how many requests the dynamic batcher merged on average.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.load.ghz import LatencySummary


@dataclass(frozen=True)
class TritonLoadResult:
    """Figures of one Triton-alone run."""

    model: str
    concurrency: int
    rows: int
    count: int
    errors: int
    duration_s: float
    rps: float
    """Successful inference requests per second."""
    latency: LatencySummary
    error_messages: Mapping[str, int]

    def as_dict(self) -> dict[str, Any]:
        lat = self.latency
        return {
            "model": self.model,
            "concurrency": self.concurrency,
            "rows_per_request": self.rows,
            "count": self.count,
            "errors": self.errors,
            "duration_s": round(self.duration_s, 3),
            "rps": round(self.rps, 1),
            "latency_ms": {
                "mean_ms": round(lat.mean_ms, 3),
                "p50_ms": round(lat.p50_ms, 3),
                "p95_ms": round(lat.p95_ms, 3),
                "p99_ms": round(lat.p99_ms, 3),
                "p999_ms": round(lat.p999_ms, 3),
                "max_ms": round(lat.max_ms, 3),
            },
            "error_messages": dict(self.error_messages),
        }


@dataclass(frozen=True)
class BatchStats:
    """Triton's counters for one model, as differences over a run."""

    inference_count: int
    """Rows inferred."""
    execution_count: int
    """Model executions (one per formed batch)."""
    success_count: int
    """Requests that succeeded."""
    queue_ns: int
    """Total time requests waited in the scheduler queue."""
    compute_infer_ns: int

    @property
    def rows_per_execution(self) -> float:
        return self.inference_count / self.execution_count if self.execution_count else 0.0

    def requests_per_execution(self, rows_per_request: int) -> float:
        """Average requests merged into one execution (1.0 = no batching happened)."""
        return self.rows_per_execution / rows_per_request if rows_per_request else 0.0

    @property
    def mean_queue_ms(self) -> float:
        return self.queue_ns / self.success_count / 1e6 if self.success_count else 0.0

    @property
    def mean_compute_ms(self) -> float:
        return self.compute_infer_ns / self.execution_count / 1e6 if self.execution_count else 0.0

    def minus(self, before: BatchStats) -> BatchStats:
        return BatchStats(
            self.inference_count - before.inference_count,
            self.execution_count - before.execution_count,
            self.success_count - before.success_count,
            self.queue_ns - before.queue_ns,
            self.compute_infer_ns - before.compute_infer_ns,
        )


def parse_statistics(stats: Mapping[str, Any], model: str) -> BatchStats:
    """The counters of `model` from `get_inference_statistics(as_json=True)`.

    Protobuf's JSON form writes uint64 as strings and leaves out zero fields; both are
    handled. Versions of the model are summed.
    """
    total = BatchStats(0, 0, 0, 0, 0)
    for entry in stats.get("model_stats", []):
        if entry.get("name") != model:
            continue
        inference = entry.get("inference_stats", {})

        def _ns(key: str, inference: Mapping[str, Any] = inference) -> int:
            return int((inference.get(key) or {}).get("ns", 0))

        def _count(key: str, inference: Mapping[str, Any] = inference) -> int:
            return int((inference.get(key) or {}).get("count", 0))

        total = BatchStats(
            total.inference_count + int(entry.get("inference_count", 0)),
            total.execution_count + int(entry.get("execution_count", 0)),
            total.success_count + _count("success"),
            total.queue_ns + _ns("queue"),
            total.compute_infer_ns + _ns("compute_infer"),
        )
    return total


def feature_width(config: Mapping[str, Any], input_name: str = "features") -> int:
    """F of input `input_name` from `get_model_config(as_json=True)` (the last dim).

    Raises:
        ValueError: no such input, or its last dimension is variable.
    """
    body = config.get("config", config)
    for tensor in body.get("input", []):
        if tensor.get("name") == input_name:
            dims = [int(d) for d in tensor.get("dims", [])]
            if not dims or dims[-1] < 1:
                raise ValueError(f"input {input_name} has no fixed last dimension: {dims}")
            return dims[-1]
    raise ValueError(f"model has no input named {input_name!r}")


async def drive(
    url: str,
    model: str,
    *,
    concurrency: int,
    duration_s: float,
    rows: int = 500,
    features: int | None = None,
    input_name: str = "features",
    output_name: str = "score",
    timeout_s: float = 2.0,
    warmup_s: float = 1.0,
) -> TritonLoadResult:
    """Closed-loop load on `model` for `duration_s` after `warmup_s` of unmeasured calls."""
    import tritonclient.grpc.aio as grpcclient  # heavy import, only when driving

    client = grpcclient.InferenceServerClient(url)
    try:
        if features is None:
            features = feature_width(await client.get_model_config(model, as_json=True), input_name)
        batch = np.random.default_rng(1).random((rows, features), dtype=np.float32)
        infer_input = grpcclient.InferInput(input_name, [rows, features], "FP32")
        infer_input.set_data_from_numpy(batch)
        outputs = [grpcclient.InferRequestedOutput(output_name)]
        latencies: list[float] = []
        errors: dict[str, int] = {}
        measuring = False
        stop_at = time.monotonic() + warmup_s + duration_s

        async def worker() -> None:
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                try:
                    await client.infer(
                        model, [infer_input], outputs=outputs, client_timeout=timeout_s
                    )
                except Exception as exc:  # any failure is a counted error
                    if measuring:
                        key = str(exc)[:200]
                        errors[key] = errors.get(key, 0) + 1
                    continue
                if measuring:
                    latencies.append((time.perf_counter() - start) * 1e3)

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(warmup_s)
        measuring = True
        began = time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
    finally:
        await client.close()
    return TritonLoadResult(
        model=model,
        concurrency=concurrency,
        rows=rows,
        count=len(latencies) + sum(errors.values()),
        errors=sum(errors.values()),
        duration_s=elapsed,
        rps=len(latencies) / elapsed if elapsed > 0 else 0.0,
        latency=LatencySummary.of(latencies),
        error_messages=errors,
    )


async def statistics(url: str, model: str) -> BatchStats:
    """Triton's current counters of `model`."""
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = await client.get_inference_statistics(model, as_json=True)
    finally:
        await client.close()
    return parse_statistics(stats, model)


def composing_models(config: Mapping[str, Any]) -> Sequence[str]:
    """Model names an ensemble's steps call (empty for a plain model)."""
    body = config.get("config", config)
    steps = (body.get("ensemble_scheduling") or {}).get("step", [])
    return [str(step["model_name"]) for step in steps if "model_name" in step]
