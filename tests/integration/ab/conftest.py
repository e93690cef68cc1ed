"""A real Postgres for the experiment tests: started once per session on a free port (as the
`postgres` system user when we are root) with the feature service's schema (the `events`
table) and the ab schema; every test starts from empty tables."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from ab.store import open_pool
from feature_service.config import PostgresSettings
from feature_service.postgres import PostgresStore
from infra.local.store_servers import LocalServerError, PostgresServer, start_with_retry

_TABLES = ("events", "exposures", "decisions", "experiment_state")


@pytest.fixture(scope="session")
def ab_postgres() -> Iterator[PostgresServer]:
    """A running Postgres 15 with a `recsys` superuser and database (trust auth)."""
    try:
        server = start_with_retry(PostgresServer)
    except LocalServerError as exc:
        pytest.fail(f"cannot start postgres: {exc}")
    yield server
    server.stop()


@pytest.fixture
def pg_settings(ab_postgres: PostgresServer) -> PostgresSettings:
    """Settings pointing at the test server."""
    return PostgresSettings(dsn=ab_postgres.dsn, pool_size=4, timeout_s=5.0)


@pytest.fixture
async def pool(pg_settings: PostgresSettings) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a migrated database whose experiment and event tables are empty."""
    store = await PostgresStore.open(pg_settings)  # creates `events` as in production
    await store.close()
    pool = await open_pool(pg_settings)
    try:
        async with pool.acquire() as connection:
            await connection.execute(f"TRUNCATE {', '.join(_TABLES)} RESTART IDENTITY")
        yield pool
    finally:
        await pool.close()
