"""The layered store against real Redis and Postgres: read-through, TTLs, writes seen by the
next read (also in a second process's store), replays, and outages of either server."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from feature_service.catalogue import ItemCatalogue
from feature_service.events import EventType
from feature_service.redis_cache import user_key
from feature_service.store import FeatureStoreError
from gateway.stages.features import fetch_user_features
from infra.local.store_servers import PostgresServer, RedisServer
from tests.integration.stores.conftest import OpenStore
from tests.integration.stores.helpers import errors, event, lookups, requests, views

pytestmark = pytest.mark.integration

USER = "12347"  # in the snapshot


def items(catalogue: ItemCatalogue, *positions: int) -> list[str]:
    return [str(catalogue.item_ids[p]) for p in positions]


async def test_read_through_fills_each_level(
    open_store: OpenStore, catalogue: ItemCatalogue
) -> None:
    registry = CollectorRegistry()
    store = await open_store(registry)
    now = datetime.now(UTC)
    await store.record_events(views(USER, items(catalogue, 3, 7), now))

    first = await store.user_features(USER, now)
    assert first.known and first.recent_viewed.tolist() == [3, 7]
    assert requests(registry, "l1", "user", "miss") == 1
    assert requests(registry, "l2", "user", "miss") == 1
    assert requests(registry, "l3", "user", "hit") == 1

    store.clear_local()  # as after the L1 TTL: now Redis has the user
    second = await store.user_features(USER, now)
    assert second.recent_viewed.tolist() == [3, 7]
    assert requests(registry, "l2", "user", "hit") == 1
    assert requests(registry, "l3", "user", "hit") == 1

    third = await store.user_features(USER, now)
    assert third.recent_viewed.tolist() == [3, 7]
    assert requests(registry, "l1", "user", "hit") == 1
    assert requests(registry, "l3", "user", "hit") == 1
    assert lookups(registry, "l1") == 3 and lookups(registry, "l2") == 2
    assert lookups(registry, "l3") >= 2  # the write and the one fill


async def test_unknown_user(open_store: OpenStore, catalogue: ItemCatalogue) -> None:
    store = await open_store()
    features = await store.user_features("no-such-user", datetime.now(UTC))
    assert not features.known and features.recent_viewed.size == 0
    assert features.recent_purchased.size == 0


async def test_ttls_expire_in_l1_and_redis(
    open_store: OpenStore, catalogue: ItemCatalogue, redis_server: RedisServer
) -> None:
    registry = CollectorRegistry()
    store = await open_store(registry, redis={"user_ttl_s": 1}, l1={"user_ttl_s": 0.3})
    now = datetime.now(UTC)
    await store.user_features(USER, now)
    await store.user_features(USER, now)
    assert requests(registry, "l1", "user", "hit") == 1
    await asyncio.sleep(0.4)
    await store.user_features(USER, now)  # L1 expired, Redis still has it
    assert requests(registry, "l2", "user", "hit") == 1
    client = Redis.from_url(redis_server.url)
    try:
        assert 0 < await client.ttl(user_key(USER)) <= 1
        await asyncio.sleep(1.1)
        assert await client.exists(user_key(USER)) == 0
        assert await client.dbsize() == 0  # every key of the user expired
    finally:
        await client.aclose()
    store.clear_local()
    await store.user_features(USER, now)
    assert requests(registry, "l3", "user", "hit") == 2


async def test_recorded_view_is_seen_by_the_next_read_in_any_process(
    open_store: OpenStore, catalogue: ItemCatalogue
) -> None:
    gateway_a = await open_store()
    gateway_b = await open_store()  # a second process sharing Redis and Postgres
    now = datetime.now(UTC)
    # Both have the user cached in L1 before the write.
    assert (await gateway_a.user_features(USER, now)).recent_viewed.size == 0
    assert (await gateway_b.user_features(USER, now)).recent_viewed.size == 0

    result = await gateway_a.record_events(views(USER, items(catalogue, 11), now))
    assert result.accepted == 1
    assert (await gateway_a.user_features(USER, now)).recent_viewed.tolist() == [11]

    # B drops its L1 copy when the invalidation message arrives (sub-millisecond locally).
    deadline = time.monotonic() + 2.0
    while (await gateway_b.user_features(USER, now)).recent_viewed.tolist() != [11]:
        assert time.monotonic() < deadline, "invalidation never reached the second store"
        await asyncio.sleep(0.005)

    # A third process that never saw the user reads the write straight from Redis.
    gateway_c = await open_store()
    now = datetime.now(UTC)
    purchase = event("p-1", USER, items(catalogue, 12)[0], now, EventType.PURCHASE, 3.0)
    await gateway_b.record_events([purchase])
    features = await gateway_c.user_features(USER, now)
    assert features.recent_viewed.tolist() == [11]
    assert features.recent_purchased.tolist() == [12]


async def test_recent_window_and_list_length(
    open_store: OpenStore, catalogue: ItemCatalogue
) -> None:
    store = await open_store(recent_items=3, recent_window_s=3600)
    now = datetime.now(UTC)
    old = event("old", USER, items(catalogue, 1)[0], now - timedelta(hours=2))
    await store.record_events([old, *views(USER, items(catalogue, 2, 3, 4, 5), now)])
    assert (await store.user_features(USER, now)).recent_viewed.tolist() == [3, 4, 5]
    store.clear_local()
    assert (await store.user_features(USER, now)).recent_viewed.tolist() == [3, 4, 5]
    later = now + timedelta(seconds=3600 - 2.5)  # the two oldest views leave the window
    assert (await store.user_features(USER, later)).recent_viewed.tolist() == [4, 5]


async def test_replayed_batch_changes_nothing(
    open_store: OpenStore, catalogue: ItemCatalogue, redis_server: RedisServer
) -> None:
    store = await open_store()
    now = datetime.now(UTC)
    await store.user_features(USER, now)  # user filled in Redis
    batch = [
        *views(USER, items(catalogue, 1, 2), now),
        event("buy", USER, items(catalogue, 2)[0], now, EventType.PURCHASE, 4.5),
    ]
    first = await store.record_events(batch)
    replay = await store.record_events(batch)
    assert (first.accepted, first.duplicates) == (3, 0)
    assert (replay.accepted, replay.duplicates) == (0, 3)
    client = Redis.from_url(redis_server.url)
    try:
        counters = await client.hgetall(user_key(USER))
        assert counters[b"n:product_view"] == b"2" and counters[b"n:purchase"] == b"1"
        assert float(counters[b"revenue"]) == 4.5
    finally:
        await client.aclose()
    features = await store.user_features(USER, now)
    assert features.recent_viewed.tolist() == [1, 2]
    assert features.recent_purchased.tolist() == [2]


async def test_concurrent_misses_load_once(open_store: OpenStore, catalogue: ItemCatalogue) -> None:
    registry = CollectorRegistry()
    store = await open_store(registry)
    now = datetime.now(UTC)
    results = await asyncio.gather(*(store.user_features(USER, now) for _ in range(50)))
    assert all(r.known for r in results)
    assert requests(registry, "l3", "user", "hit") == 1


async def test_redis_outage_degrades_to_postgres_and_recovers(
    open_store: OpenStore, catalogue: ItemCatalogue, redis_server: RedisServer
) -> None:
    registry = CollectorRegistry()
    store = await open_store(registry)
    now = datetime.now(UTC)
    await store.record_events(views(USER, items(catalogue, 5), now, prefix="a"))
    assert (await store.user_features(USER, now)).recent_viewed.tolist() == [5]

    redis_server.stop_process()
    try:
        # Writes still succeed (Postgres), reads come from Postgres and say so in the metrics.
        result = await store.record_events(views(USER, items(catalogue, 6), now, prefix="b"))
        assert result.accepted == 1
        assert errors(registry, "l2") >= 1
        store.clear_local()
        started = time.monotonic()
        features = await store.user_features(USER, now)
        assert features.recent_viewed.tolist() == [5, 6]
        assert time.monotonic() - started < 1.0
        l3_reads = requests(registry, "l3", "user", "hit")
        assert l3_reads >= 1
    finally:
        redis_server.restart()

    # Back (empty, like a replaced cache node): after retry_after_s reads use Redis again.
    await asyncio.sleep(0.3)
    store.clear_local()
    l2_misses = requests(registry, "l2", "user", "miss")
    assert (await store.user_features(USER, now)).recent_viewed.tolist() == [5, 6]
    assert requests(registry, "l2", "user", "miss") == l2_misses + 1
    store.clear_local()
    assert (await store.user_features(USER, now)).recent_viewed.tolist() == [5, 6]
    assert requests(registry, "l2", "user", "hit") >= 1


async def test_postgres_outage_serves_cached_features_and_spools_writes(
    open_store: OpenStore,
    catalogue: ItemCatalogue,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
) -> None:
    registry = CollectorRegistry()
    store = await open_store(registry)
    now = datetime.now(UTC)
    await store.record_events(views(USER, items(catalogue, 9), now))
    assert (await store.user_features(USER, now)).recent_viewed.tolist() == [9]

    postgres_server.stop_process()
    redis_server.stop_process()
    try:
        # L1 still serves the hot user, without touching either server.
        async with asyncio.timeout(0.05):
            assert (await store.user_features(USER, now)).recent_viewed.tolist() == [9]
        # Nothing cached: an error within the caller's timeout, never a hang.
        started = time.monotonic()
        with pytest.raises(FeatureStoreError):
            async with asyncio.timeout(2.0):
                await store.user_features("12348", now)
        assert time.monotonic() - started < 2.0
        assert errors(registry, "l3") >= 1
        # The gateway's stage turns that into empty default features, flagged incomplete.
        features, complete = await fetch_user_features(store, "12348", now, timeout_s=0.5)
        assert not complete and features.recent_viewed.size == 0
        # Writes are acknowledged from the local spool (fsynced), not refused.
        spooled = await store.record_events(views(USER, items(catalogue, 10), now, prefix="x"))
        assert (spooled.accepted, spooled.duplicates) == (1, 0)
        assert store._spool.pending()
    finally:
        postgres_server.restart()
        redis_server.restart()
    # The spool is replayed into Postgres by itself once it is back, exactly once.
    deadline = time.monotonic() + 15
    while store._spool.pending():
        assert time.monotonic() < deadline, "spool not replayed within 15 s"
        await asyncio.sleep(0.2)
    again = await store.record_events(views(USER, items(catalogue, 10), now, prefix="x"))
    assert (again.accepted, again.duplicates) == (0, 1)
    store.clear_local()
    assert (await store.user_features(USER, now)).recent_viewed.tolist() == [9, 10]


def _spool_pending(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("recsys_event_spool_pending_events")


async def test_closing_replays_the_spool_or_reports_what_stays(
    open_store: OpenStore,
    catalogue: ItemCatalogue,
    postgres_server: PostgresServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The spool gauge counts what waits; closing tries one last replay and logs at error level
    what it could not store; the next process with the same spool path stores it, once."""
    spool = tmp_path / "shared-spool.jsonl"
    now = datetime.now(UTC)
    first_batch = views(USER, items(catalogue, 11), now, prefix="close-down")
    second_batch = views(USER, items(catalogue, 12), now, prefix="close-up")
    # An hour between replays: only opening and closing replay here.
    registry = CollectorRegistry()
    store = await open_store(registry, spool_path=spool, spool_replay_interval_s=3600)
    assert _spool_pending(registry) == 0
    postgres_server.stop_process()
    try:
        assert (await store.record_events(first_batch)).accepted == 1
        assert _spool_pending(registry) == 1
        with caplog.at_level(logging.ERROR, logger="feature_service.layered"):
            await store.close()  # Postgres still down: the event stays, and says so
        assert f"closing with 1 acknowledged events still in the spool {spool}" in caplog.text
        assert spool.read_text(encoding="utf-8").count("\n") == 1
    finally:
        postgres_server.restart()

    # The next store on the same path stores it when it opens.
    registry = CollectorRegistry()
    store = await open_store(registry, spool_path=spool, spool_replay_interval_s=3600)
    deadline = time.monotonic() + 15
    while _spool_pending(registry):
        assert time.monotonic() < deadline, "spool not replayed on opening"
        await asyncio.sleep(0.1)
    # Spooled during an outage that ends before closing: the last replay stores it.
    postgres_server.stop_process()
    try:
        assert (await store.record_events(second_batch)).accepted == 1
        assert _spool_pending(registry) == 1
    finally:
        postgres_server.restart()
    await store.close()
    assert not spool.exists()

    # Both are in Postgres exactly once.
    store = await open_store(CollectorRegistry())
    again = await store.record_events([*first_batch, *second_batch])
    assert (again.accepted, again.duplicates) == (0, 2)


async def test_a_caller_that_gives_up_leaves_the_load_to_fill_the_caches(
    open_store: OpenStore, catalogue: ItemCatalogue
) -> None:
    """A caller whose timeout fires mid-load does not cancel the load: it fills the caches."""
    registry = CollectorRegistry()
    store = await open_store(registry)
    now = datetime.now(UTC)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.0001):
            await store.user_features(USER, now)
    await asyncio.sleep(0.5)
    assert (await store.user_features(USER, now)).known
    assert requests(registry, "l3", "user", "hit") == 1
