"""Feature fetch of one Recommend request (the user's real-time features), per store level.

Starts its own `redis-server` and Postgres (as the integration tests do), opens the layered
store over the real snapshot in `build/data`, and times `user_features` when the user is
served by L1 (in process), by Redis (L1 emptied before each call: one pipelined round trip),
and by Postgres (L1 emptied and Redis flushed before each call: the read-through, which also
writes the user back to Redis). Item features come from the catalogue in the gateway's memory,
not from the store. Writes median / p99 per call to `benchmarks/results/feature_bench.json`
with the machine and settings.

    .venv/bin/python -m benchmarks.feature_bench [--iterations 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import redis
from redis.asyncio import Redis

from benchmarks.harness.report import machine_description
from feature_service.catalogue import ItemCatalogue
from feature_service.config import FeatureStoreSettings, PostgresSettings, RedisSettings
from feature_service.events import Event, EventType
from feature_service.layered import LayeredFeatureStore
from infra.local.store_servers import PostgresServer, RedisServer, start_with_retry

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "feature_bench.json"
VIEWED = 20
TARGETS_MS = {"l1": 0.3, "redis": 2.0}
USER = "12347"


def _machine() -> dict[str, Any]:
    return {
        **machine_description(),
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "note": "shared development machine; other processes may add noise",
    }


async def _measure(
    call: Callable[[], Awaitable[object]],
    reset: Callable[[], Awaitable[None]],
    iterations: int,
) -> dict[str, float]:
    samples: list[float] = []
    for _ in range(iterations):
        await reset()
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000.0)
    samples.sort()
    return {
        "iterations": iterations,
        "median_ms": round(statistics.median(samples), 4),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 4),
        "max_ms": round(samples[-1], 4),
    }


async def run(iterations: int, data_dir: Path) -> dict[str, Any]:
    """Runs the three scenarios against fresh local servers; returns the report."""
    catalogue = ItemCatalogue.load(data_dir)
    with (
        start_with_retry(RedisServer) as redis_server,
        start_with_retry(PostgresServer) as postgres_server,
    ):
        settings = FeatureStoreSettings(
            backend="redis_postgres",
            redis=RedisSettings(url=redis_server.url),
            postgres=PostgresSettings(dsn=postgres_server.dsn, pool_size=4),
        )
        rng = np.random.default_rng(7)
        positions = rng.choice(len(catalogue), VIEWED, replace=False).astype(np.int32)
        now = datetime.now(UTC)
        store = await LayeredFeatureStore.open(settings, catalogue, data_dir)
        client = Redis.from_url(redis_server.url)
        try:
            await store.record_events(
                [
                    Event(
                        event_id=f"bench-{i}",
                        type=EventType.PRODUCT_VIEW,
                        user_id=USER,
                        item_id=str(catalogue.item_ids[int(p)]),
                        request_id="bench",
                        timestamp=now - timedelta(minutes=i),
                    )
                    for i, p in enumerate(positions)
                ]
            )

            async def fetch() -> object:
                return await store.user_features(USER, now)

            async def nothing() -> None:
                return None

            async def empty_l1() -> None:
                store.clear_local()

            async def empty_l1_and_redis() -> None:
                store.clear_local()
                await client.flushdb()

            await fetch()  # warm: L1 and Redis hold the user
            warmup = max(iterations // 10, 10)
            results: dict[str, Any] = {}
            for name, reset, n in (
                ("l1", nothing, iterations),
                ("redis", empty_l1, iterations),
                ("postgres", empty_l1_and_redis, max(iterations // 4, 50)),
            ):
                await _measure(fetch, reset, warmup)
                results[name] = await _measure(fetch, reset, n)
                if name in TARGETS_MS:
                    results[name]["target_ms"] = TARGETS_MS[name]
                    results[name]["meets_target"] = results[name]["median_ms"] < TARGETS_MS[name]
        finally:
            await client.aclose()
            await store.close()
    return {
        "benchmark": "feature fetch of one request: the user's real-time features",
        "method": "LayeredFeatureStore.user_features, sequential calls, one event loop",
        "scenarios": {
            "l1": "user in the in-process cache",
            "redis": "L1 emptied before each call: the user in one pipelined round trip",
            "postgres": "L1 emptied and Redis flushed before each call: read-through from "
            "Postgres (3 user queries) plus the write-back to Redis",
        },
        "results": results,
        "settings": {
            "viewed_items": VIEWED,
            "recent_items": settings.recent_items,
            "redis": "local redis-server 7 over TCP 127.0.0.1, no persistence",
            "postgres": "local Postgres 15 over TCP 127.0.0.1, fsync off, pool_size 4",
        },
        "machine": _machine(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--data-dir", type=Path, default=REPO / "build" / "data")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    report = asyncio.run(run(args.iterations, args.data_dir))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["results"], indent=2))


if __name__ == "__main__":
    main()
