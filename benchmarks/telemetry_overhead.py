"""Recommend throughput with metrics and tracing on versus off, side by side.

"On" is the shipped default: every Prometheus metric recorded, an OpenTelemetry span per
request and per stage, traces sampled at the default 1% (parent based) into a batch span
processor. "Off" replaces every metric with a no-op and uses OpenTelemetry's no-op tracer
provider. Both run the real gateway in process (gRPC server and an asyncio client with 32
calls in flight on one event loop) on the embedded profile without a ranker model, so the
figure isolates the gateway's own work. Rounds alternate on/off; medians are compared.
Target: overhead under 5%.

    python -m benchmarks.telemetry_overhead [--requests 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import Counter, Histogram
from recsys.v1 import recommendation_pb2 as pb
from recsys.v1 import recommendation_pb2_grpc as pb_grpc

from benchmarks.load.report import machine_description
from gateway.config import load_settings
from gateway.metrics import Metrics
from gateway.resources import open_resources
from gateway.server import start_server

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONCURRENCY = 32


class _NoOp:
    """Stands in for a metric: accepts every call, records nothing."""

    def labels(self, *args: object, **kwargs: object) -> _NoOp:
        return self

    def inc(self, *args: object, **kwargs: object) -> None:
        return None

    def observe(self, *args: object, **kwargs: object) -> None:
        return None


def _metrics(on: bool) -> Metrics:
    metrics = Metrics()
    if not on:
        for name, value in list(vars(metrics).items()):
            if isinstance(value, Counter | Histogram):
                setattr(metrics, name, _NoOp())

        @contextlib.contextmanager
        def no_stage(name: str) -> Iterator[None]:
            yield

        metrics.stage = no_stage  # type: ignore[method-assign]
    return metrics


def _tracer_provider(on: bool) -> Any:
    if not on:
        return trace.NoOpTracerProvider()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01)))
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    return provider


async def _round(on: bool, requests: int, users: list[str]) -> float:
    """Requests per second of one round."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            REPO / "infra" / "config" / "local.yaml",
            {
                "RECSYS__MODEL__ARTIFACTS_DIR": str(REPO / "build"),
                "RECSYS__MODEL__REPOSITORY_DIR": f"{tmp}/no-models",
                "RECSYS__SERVING__PORT": "0",
                "RECSYS__SERVING__RATE_LIMIT": "",
                "RECSYS__MONITORING__METRICS__ENABLED": "false",
                "RECSYS__FEATURE_STORE__EMBEDDED__EVENT_LOG_PATH": f"{tmp}/events.sqlite3",
                "RECSYS__AB_TESTING__EXPOSURE_LOG_PATH": f"{tmp}/exposures.sqlite3",
                "RECSYS__AB_TESTING__CONTROLLER__STATE_FILE": f"{tmp}/state.json",
            },
        )
        async with open_resources(
            settings, _metrics(on), cast(TracerProvider, _tracer_provider(on))
        ) as resources:
            server = await start_server(settings, resources)
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                    stub = pb_grpc.RecommendationServiceStub(channel)
                    queue = iter(range(requests))

                    async def worker() -> None:
                        for i in queue:
                            await stub.Recommend(  # type: ignore[misc]
                                pb.RecommendRequest(user_id=users[i % len(users)]), timeout=10
                            )

                    for _ in range(200):  # warm-up
                        await stub.Recommend(  # type: ignore[misc]
                            pb.RecommendRequest(user_id=users[0]), timeout=10
                        )
                    started = time.perf_counter()
                    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
                    return requests / (time.perf_counter() - started)
            finally:
                await server.drain_and_stop(0)


async def _measure(requests: int, rounds: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    users = pq.read_table(REPO / "build" / "data" / "users.parquet").column("user_id").to_pylist()
    on: list[float] = []
    off: list[float] = []
    for _ in range(rounds):
        off.append(await _round(False, requests, users))
        on.append(await _round(True, requests, users))
    overhead = 1.0 - statistics.median(on) / statistics.median(off)
    return {
        "rps_on": on,
        "rps_off": off,
        "median_rps_on": statistics.median(on),
        "median_rps_off": statistics.median(off),
        "overhead": overhead,
        "target_overhead": 0.05,
        "target_met": overhead < 0.05,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="telemetry_overhead", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures = asyncio.run(_measure(args.requests, args.rounds))
    report = {
        "benchmark": "Recommend throughput, metrics + tracing on vs off",
        "machine": {**machine_description(), "python": platform.python_version()},
        "settings": {
            "requests_per_round": args.requests,
            "rounds": args.rounds,
            "concurrency": CONCURRENCY,
            "trace_sampling": 0.01,
            "profile": "embedded, fallback ranker (no Triton), client in process",
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **figures,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "telemetry_overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
