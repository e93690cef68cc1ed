"""Drive Triton alone with ghz: `concurrency` workers sending the gateway's ranking batch.

Every call sends one ModelInferRequest of `rows` candidates (the gateway ranks 500) with
`features` FP32 [rows, F] and reads `score`, over one connection, like the gateway. The same ghz
that measures the gateway drives it (Triton's API given as a protoset built from tritonclient's
descriptors, the request as one serialized message), so the ratio of the two compares servers,
not clients. F comes from the model's config (`get_model_config`). Triton's own statistics
(`get_inference_statistics`) give the achieved batch size: `inference_count` counts rows,
`execution_count` counts model executions, so rows / executions over the run, divided by
`rows`, is how many requests the dynamic batcher merged on average.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.ghz import GhzResult, GhzRun, LatencySummary, run_ghz
from benchmarks.harness.procs import tree_cpu_seconds


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
    server_cpu_ms_per_request: float | None = None
    """CPU time of Triton and its backend stubs per successful request, when its pid was given."""

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
            "server_cpu_ms_per_request": self.server_cpu_ms_per_request,
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


TRITON_INFER_CALL = "inference.GRPCInferenceService/ModelInfer"


def write_protoset(path: Path) -> Path:
    """Triton's gRPC API as a FileDescriptorSet for ghz's `--protoset`.

    Built from the descriptors tritonclient ships (grpc_service.proto and model_config.proto),
    so it always matches the client library the gateway uses; no .proto files are needed.
    """
    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import service_pb2

    files: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()

    def add(descriptor: Any) -> None:
        if descriptor.name in seen:
            return
        seen.add(descriptor.name)
        for dependency in descriptor.dependencies:
            add(dependency)  # dependencies first, as protoc writes them
        proto = descriptor_pb2.FileDescriptorProto()
        descriptor.CopyToProto(proto)
        files.append(proto)

    add(service_pb2.DESCRIPTOR)
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=files).SerializeToString())
    return path


def write_infer_request(
    path: Path,
    model: str,
    *,
    rows: int,
    features: int,
    input_name: str = "features",
    output_name: str = "score",
) -> Path:
    """One serialized ModelInferRequest: FP32 [rows, features] of random values in
    `raw_input_contents`, the way tritonclient sends a numpy array, asking for `output_name`."""
    from tritonclient.grpc import service_pb2

    batch = np.random.default_rng(1).random((rows, features), dtype=np.float32)
    request = service_pb2.ModelInferRequest(
        model_name=model,
        inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(
                name=input_name, datatype="FP32", shape=[rows, features]
            )
        ],
        outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=output_name)],
        raw_input_contents=[batch.tobytes()],
    )
    path.write_bytes(request.SerializeToString())
    return path


def model_feature_width(url: str, model: str, input_name: str = "features") -> int:
    """F of `model`'s input, from Triton's model configuration."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        return feature_width(client.get_model_config(model, as_json=True), input_name)
    finally:
        client.close()


def drive(
    ghz: Path,
    url: str,
    model: str,
    *,
    workdir: Path,
    concurrency: int,
    duration_s: float,
    rows: int = 500,
    features: int | None = None,
    timeout_s: float = 2.0,
    warmup_s: float = 1.0,
    server_pid: int | None = None,
) -> TritonLoadResult:
    """Closed-loop load on `model` with ghz (the client of every other figure in the report),
    `concurrency` workers on one connection, for `duration_s` after `warmup_s` unmeasured.
    With `server_pid` (tritonserver's), the CPU time of its process tree is measured too."""
    if features is None:
        features = model_feature_width(url, model)
    workdir.mkdir(parents=True, exist_ok=True)
    protoset = write_protoset(workdir / "triton.protoset")
    request = write_infer_request(
        workdir / f"{model}-{rows}x{features}.bin", model, rows=rows, features=features
    )

    def run(name: str, seconds: float) -> GhzResult:
        shape = GhzRun(
            target=url,
            data_file=request,
            duration_s=seconds,
            concurrency=concurrency,
            timeout_s=timeout_s,
            call=TRITON_INFER_CALL,
            protoset=protoset,
            binary_file=request,
            name=name,
        )
        return run_ghz(ghz, shape, workdir / "ghz")

    if warmup_s > 0:
        run(f"{model}-warmup", warmup_s)
    cpu_before = tree_cpu_seconds(server_pid) if server_pid else None
    result = run(f"{model}-c{concurrency}", duration_s)
    cpu_after = tree_cpu_seconds(server_pid) if server_pid else None
    cpu_ms = (
        round(1000 * (cpu_after - cpu_before) / max(result.ok, 1), 3)
        if cpu_before is not None and cpu_after is not None
        else None
    )
    return TritonLoadResult(
        model=model,
        concurrency=concurrency,
        rows=rows,
        count=result.count,
        errors=result.errors,
        duration_s=result.duration_s,
        rps=result.ok_rps,
        latency=result.latency,
        error_messages=result.error_messages,
        server_cpu_ms_per_request=cpu_ms,
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
