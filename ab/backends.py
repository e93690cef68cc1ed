"""Where experiment data lives, by feature store backend; opened by the sidecar and the CLI.

- `redis_postgres`: exposures, events, decisions and state in Postgres (one pool).
- `embedded` (`make run`): exposures in `ab_testing.exposure_log_path`, events in
  `feature_store.embedded.event_log_path` (SQLite files the gateways write; opened here with
  the event log attached, so the one metric query of `ab.variant_sums` joins them), decisions
  and state in `ab_testing.controller.state_file` (JSON, read by every gateway's routing).

Both give the same `ExperimentMetrics` and a `StateStore`, so the controller decides, audits
and routes the same way on either.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from ab.exposures import upgrade_exposure_file
from ab.sidecar_settings import SidecarSettings
from ab.store import (
    POSTGRES_ERRORS,
    ExperimentStoreError,
    JsonStateStore,
    PostgresStateStore,
    StateStore,
    open_pool,
)
from ab.variant_sums import (
    POSTGRES,
    SQLITE,
    Dialect,
    ExperimentMetrics,
    MetricsConnection,
)
from feature_service.event_log import SqliteEventLog
from feature_service.sqlite_file import SqliteFile
from feature_service.store import FeatureStoreError

_PG_ERRORS = POSTGRES_ERRORS


class _PostgresConnection:
    def __init__(self, connection: Any) -> None:
        self._connection = connection

    @property
    def dialect(self) -> Dialect:
        return POSTGRES

    async def fetch(self, sql: str, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        text, args = POSTGRES.render(sql, values)
        return [tuple(row.values()) for row in await self._connection.fetch(text, *args)]

    async def execute(self, sql: str) -> None:
        await self._connection.execute(sql)

    async def insert_assignments(self, rows: Sequence[tuple[str, str]]) -> None:
        if rows:
            await self._connection.copy_records_to_table("ab_assigned", records=list(rows))


class PostgresMetricsDatabase:
    """`ab.variant_sums.MetricsDatabase` on a pool (borrowed: its owner closes it)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[MetricsConnection]:
        """A repeatable-read transaction, rolled back on exit.

        Raises:
            ExperimentStoreError: Postgres failed.
        """
        try:
            async with self._pool.acquire() as connection:
                transaction = connection.transaction(isolation="repeatable_read")
                await transaction.start()
                try:
                    yield _PostgresConnection(connection)
                finally:
                    await transaction.rollback()
        except _PG_ERRORS as exc:
            raise ExperimentStoreError(
                f"postgres: reading experiment metrics failed: {exc!r}"
            ) from exc


class _SqliteConnection:
    def __init__(self, file: SqliteFile) -> None:
        self._file = file

    @property
    def dialect(self) -> Dialect:
        return SQLITE

    async def fetch(self, sql: str, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        text, args = SQLITE.render(sql, values)
        return await self._file.run(lambda c: [tuple(row) for row in c.execute(text, args)])

    async def execute(self, sql: str) -> None:
        await self._file.run(lambda c: c.execute(sql))

    async def insert_assignments(self, rows: Sequence[tuple[str, str]]) -> None:
        await self._file.run(lambda c: c.executemany("INSERT INTO ab_assigned VALUES (?, ?)", rows))


class SqliteMetricsDatabase:
    """`ab.variant_sums.MetricsDatabase` on the embedded profile's files: the exposure log,
    with the event log attached (both in WAL mode, so reading never blocks the gateways'
    writes). Open with `await SqliteMetricsDatabase.open(...)`, then `close()`."""

    def __init__(self, file: SqliteFile) -> None:
        self._file = file
        self._lock = asyncio.Lock()  # one transaction at a time on the one connection

    @classmethod
    async def open(cls, exposure_log: Path, event_log: Path) -> SqliteMetricsDatabase:
        """Opens both files, creating their tables when no gateway has yet (the sidecar may
        start first).

        Raises:
            ExperimentStoreError: a file cannot be opened.
        """
        try:
            log = await SqliteEventLog.open(event_log)  # creates the event tables if missing
            await log.close()
            file = await SqliteFile.open(exposure_log, "", durable=False, name="ab-metrics")
            await file.run(upgrade_exposure_file)
        except (sqlite3.Error, OSError, FeatureStoreError) as exc:
            raise ExperimentStoreError(
                f"sqlite: cannot open {exposure_log} / {event_log}: {exc}"
            ) from exc
        try:
            await file.run(
                lambda c: c.execute("ATTACH DATABASE ? AS feature_events", (str(event_log),))
            )
        except sqlite3.Error as exc:
            await file.close()
            raise ExperimentStoreError(f"sqlite: cannot attach {event_log}: {exc}") from exc
        return cls(file)

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[MetricsConnection]:
        """A read transaction (WAL snapshot at its first read), rolled back on exit.

        Raises:
            ExperimentStoreError: SQLite failed.
        """
        async with self._lock:
            try:
                await self._file.run(lambda c: c.execute("BEGIN"))
                try:
                    yield _SqliteConnection(self._file)
                finally:
                    await self._file.run(lambda c: c.execute("ROLLBACK"))
            except sqlite3.Error as exc:
                raise ExperimentStoreError(
                    f"sqlite: reading experiment metrics failed: {exc}"
                ) from exc

    async def close(self) -> None:
        """Closes the connection."""
        await self._file.close()


@dataclass(frozen=True, slots=True)
class ExperimentBackend:
    """Metrics and decisions of one deployment."""

    metrics: ExperimentMetrics
    store: StateStore
    description: str
    """Where the data is, for logs."""


@contextlib.asynccontextmanager
async def open_backend(
    settings: SidecarSettings, *, max_connections: int | None = None
) -> AsyncIterator[ExperimentBackend]:
    """Opens the deployment's experiment data (see the module docstring); closes it on exit.

    Raises:
        ExperimentStoreError: the database or files cannot be opened.
    """
    if settings.uses_postgres:
        pool = await open_pool(settings.feature_store.postgres, max_size=max_connections)
        try:
            yield ExperimentBackend(
                ExperimentMetrics(PostgresMetricsDatabase(pool)),
                PostgresStateStore(pool),
                "postgres",
            )
        finally:
            await pool.close()
        return
    ab = settings.ab_testing
    events = settings.feature_store.embedded.event_log_path
    database = await SqliteMetricsDatabase.open(ab.exposure_log_path, events)
    try:
        yield ExperimentBackend(
            ExperimentMetrics(database),
            JsonStateStore(ab.controller.state_file),
            f"embedded: {ab.exposure_log_path}, {events}, {ab.controller.state_file}",
        )
    finally:
        await database.close()
