"""L3 against a real Postgres: migrations, idempotent event log, atomic snapshot reloads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_service.config import PostgresSettings
from feature_service.events import EventType
from feature_service.postgres import PostgresStore, load_migrations
from feature_service.records import Activity
from feature_service.store import FeatureStoreError
from infra.local.store_servers import PostgresServer, RedisServer
from tests.integration.stores.helpers import event, views

pytestmark = pytest.mark.integration

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def fresh_postgres(
    servers_up: tuple[RedisServer, PostgresServer],
) -> PostgresSettings:
    """Settings for an empty database: no tables, not even `schema_migrations`."""
    server = servers_up[1]
    connection = await asyncpg.connect(server.dsn)
    try:
        await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await connection.close()
    return PostgresSettings(dsn=server.dsn, pool_size=2, timeout_s=5.0)


@pytest.fixture
async def pg(fresh_postgres: PostgresSettings) -> AsyncIterator[PostgresStore]:
    """An open store on an empty database."""
    store = await PostgresStore.open(fresh_postgres)
    yield store
    await store.close()


async def test_migrations_apply_once_even_when_opened_concurrently(
    fresh_postgres: PostgresSettings,
) -> None:
    expected = [(m.version, m.name) for m in load_migrations()]
    assert expected[0] == (1, "initial")
    stores = await asyncio.gather(*(PostgresStore.open(fresh_postgres) for _ in range(4)))
    try:
        assert await stores[0].applied_migrations() == expected
        # Opening again applies nothing and changes nothing.
        again = await PostgresStore.open(fresh_postgres)
        assert await again.migrate(load_migrations()) == []
        await again.close()
        assert await stores[1].applied_migrations() == expected
    finally:
        for store in stores:
            await store.close()


async def test_migration_files_must_be_numbered(tmp_path: Path) -> None:
    (tmp_path / "1_bad.sql").write_text("SELECT 1")
    with pytest.raises(FeatureStoreError, match="NNN_name"):
        load_migrations(tmp_path)


async def test_replayed_batch_is_stored_once(pg: PostgresStore) -> None:
    batch = views("u1", ["A", "B", "C"], NOW)
    first = await pg.append_events(batch)
    assert (first.accepted, first.duplicates) == (3, 0)
    replay = await pg.append_events(batch)
    assert (replay.accepted, replay.duplicates) == (0, 3)
    # A batch mixing new events, stored ones and a repeat within itself.
    mixed = [*batch[:1], event("new-1", "u1", "D", NOW), event("new-1", "u1", "D", NOW)]
    result = await pg.append_events(mixed)
    assert (result.accepted, result.duplicates) == (1, 2)
    stored = await pg.recent_events("u1", list(EventType), NOW - timedelta(days=1), 100)
    assert sorted(e.event_id for e in stored) == sorted([*(e.event_id for e in batch), "new-1"])


async def test_recent_events_by_type_since_and_limit(pg: PostgresStore) -> None:
    old = event("old", "u1", "A", NOW - timedelta(days=10))
    buy = event("buy", "u1", "B", NOW - timedelta(seconds=5), EventType.PURCHASE, 9.5)
    other_user = event("other", "u2", "C", NOW)
    await pg.append_events([old, buy, other_user, *views("u1", ["D", "E", "F"], NOW)])
    since = NOW - timedelta(days=1)
    recent = await pg.recent_events("u1", [EventType.PRODUCT_VIEW], since, 2)
    assert [e.item_id for e in recent] == ["F", "E"]  # newest first, limited
    assert recent[0].timestamp == NOW - timedelta(seconds=1)
    purchases = await pg.recent_events("u1", [EventType.PURCHASE], since, 10)
    assert [(e.event_id, e.revenue, e.quantity) for e in purchases] == [("buy", 9.5, 1)]

    state = await pg.user_state("u1", since, per_activity=2)
    assert [item for _, item in state.recent[Activity.VIEW]] == ["F", "E"]
    assert [item for _, item in state.recent[Activity.PURCHASE]] == ["B"]
    assert state.counters == {"n:product_view": 4.0, "n:purchase": 1.0, "revenue": 9.5}
    assert not state.known


async def test_snapshot_load_skips_unchanged_files(pg: PostgresStore, data_dir: Path) -> None:
    counts = await pg.load_snapshot_files(data_dir, NOW)
    assert counts is not None
    assert counts.items == pq.read_metadata(data_dir / "items.parquet").num_rows
    assert counts.users == pq.read_metadata(data_dir / "users.parquet").num_rows
    assert await pg.load_snapshot_files(data_dir, NOW) is None
    assert await pg.load_snapshot_files(data_dir, NOW, force=True) == counts


async def test_snapshot_reload_is_atomic(
    pg: PostgresStore, fresh_postgres: PostgresSettings, data_dir: Path
) -> None:
    items = pq.read_table(data_dir / "items.parquet")
    users = pq.read_table(data_dir / "users.parquet")
    await pg.load_snapshot(items, users, NOW)
    # The new snapshot: every price doubled, the first item gone.
    doubled = items.set_column(
        items.schema.get_field_index("price"),
        "price",
        pa.compute.multiply(items.column("price"), 2.0),
    ).slice(1)
    old_total = sum(items.column("price").to_pylist())
    new_total = sum(doubled.column("price").to_pylist())

    # A reload that fails half-way (a NULL title in the last row) changes nothing.
    titles = doubled.column("title").to_pylist()
    broken = doubled.set_column(
        doubled.schema.get_field_index("title"), "title", pa.array([*titles[:-1], None])
    )
    with pytest.raises(FeatureStoreError):
        await pg.load_snapshot(broken, users, NOW + timedelta(hours=1))

    # Readers polling during a good reload only ever see the old or the new snapshot.
    reader = await asyncpg.connect(fresh_postgres.dsn)
    seen: set[tuple[int, float]] = set()
    done = asyncio.Event()

    async def poll() -> None:
        while not done.is_set():
            row = await reader.fetchrow("SELECT count(*) AS n, sum(price) AS total FROM items")
            seen.add((row["n"], round(row["total"], 2)))
            await asyncio.sleep(0)

    try:
        polling = asyncio.create_task(poll())
        await asyncio.sleep(0.01)
        await pg.load_snapshot(doubled, users, NOW + timedelta(hours=2))
        await asyncio.sleep(0.01)
        done.set()
        await polling
    finally:
        await reader.close()
    assert seen <= {
        (items.num_rows, round(old_total, 2)),
        (doubled.num_rows, round(new_total, 2)),
    }
    assert (doubled.num_rows, round(new_total, 2)) in seen


async def test_unreachable_postgres_raises_feature_store_error(
    postgres_server: PostgresServer,
) -> None:
    settings = PostgresSettings(dsn="postgresql://recsys@127.0.0.1:1/recsys", timeout_s=1.0)
    with pytest.raises(FeatureStoreError, match="cannot connect") as info:
        await PostgresStore.open(settings)
    assert info.value.__cause__ is not None
