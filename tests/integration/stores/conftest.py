"""Real `redis-server` and Postgres for the layered feature store tests.

Both start once per session on free ports in private temp folders (Postgres as the `postgres`
system user when we are root) and stop at the end; every test starts from empty data (FLUSHDB,
TRUNCATE). A test may stop a server to simulate an outage; the `servers_up` fixture brings it
back before the next test.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from feature_service.catalogue import ItemCatalogue
from feature_service.config import (
    FeatureStoreSettings,
    LocalCacheSettings,
    PostgresSettings,
    RedisSettings,
)
from feature_service.layered import LayeredFeatureStore
from infra.local.store_servers import (
    LocalServerError,
    PostgresServer,
    RedisServer,
    start_with_retry,
)

OpenStore = Callable[..., Awaitable[LayeredFeatureStore]]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A running `redis-server` without persistence."""
    try:
        server = start_with_retry(RedisServer)
    except LocalServerError as exc:
        pytest.fail(f"cannot start redis-server: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running Postgres 15 with a `recsys` superuser and database (trust auth)."""
    try:
        server = start_with_retry(PostgresServer)
    except LocalServerError as exc:
        pytest.fail(f"cannot start postgres: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def data_dir(build_dir: Path) -> Path:
    """The offline snapshot (items.parquet, users.parquet) built from the real data."""
    return build_dir / "data"


@pytest.fixture(scope="session")
def catalogue(data_dir: Path) -> ItemCatalogue:
    """The item catalogue of the snapshot."""
    return ItemCatalogue.load(data_dir)


@pytest.fixture
async def servers_up(
    redis_server: RedisServer, postgres_server: PostgresServer
) -> AsyncIterator[tuple[RedisServer, PostgresServer]]:
    """Both servers running with empty data; restarted afterwards if a test stopped them."""
    for server in (redis_server, postgres_server):
        if not server.running:
            server.restart()
    client = Redis.from_url(redis_server.url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    connection = await asyncpg.connect(postgres_server.dsn)
    try:
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables"
            " WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
        )
        if tables:  # the schema stays; its data goes (the snapshot reloads on open)
            names = ", ".join(f'"{row["tablename"]}"' for row in tables)
            await connection.execute(f"TRUNCATE {names}")
    finally:
        await connection.close()
    yield redis_server, postgres_server
    for server in (redis_server, postgres_server):
        if not server.running:
            server.restart()


def make_settings(
    redis_server: RedisServer, postgres_server: PostgresServer, **overrides: Any
) -> FeatureStoreSettings:
    """Settings for the test servers; `overrides` are `redis`, `postgres`, `l1` field dicts or
    top-level fields."""
    redis = {"url": redis_server.url, "timeout_s": 0.5, "retry_after_s": 0.2}
    redis.update(overrides.pop("redis", {}))
    postgres = {"dsn": postgres_server.dsn, "pool_size": 4, "timeout_s": 2.0}
    postgres.update(overrides.pop("postgres", {}))
    l1 = {"user_ttl_s": 30.0}
    l1.update(overrides.pop("l1", {}))
    return FeatureStoreSettings(
        backend="redis_postgres",
        redis=RedisSettings(**redis),
        postgres=PostgresSettings(**postgres),
        l1=LocalCacheSettings(**l1),
        **overrides,
    )


@pytest.fixture
async def open_store(
    servers_up: tuple[RedisServer, PostgresServer],
    catalogue: ItemCatalogue,
    data_dir: Path,
    tmp_path: Path,
) -> AsyncIterator[OpenStore]:
    """`await open_store(registry=None, **setting_overrides)`: an open store, closed after."""
    stores: list[LayeredFeatureStore] = []

    async def open_(
        registry: CollectorRegistry | None = None, **overrides: Any
    ) -> LayeredFeatureStore:
        overrides.setdefault("spool_path", tmp_path / f"spool-{len(stores)}.jsonl")
        overrides.setdefault("spool_replay_interval_s", 0.2)
        settings = make_settings(*servers_up, **overrides)
        store = await LayeredFeatureStore.open(settings, catalogue, data_dir, registry)
        stores.append(store)
        return store

    yield open_
    for store in reversed(stores):
        with contextlib.suppress(Exception):
            await store.close()
