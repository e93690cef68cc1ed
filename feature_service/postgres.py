"""L3: Postgres holds the offline snapshot (items, users) and the durable event log.

- The schema comes from versioned SQL files, `migrations/NNN_name.sql`, applied on open in one
  transaction under an advisory lock and recorded in `schema_migrations`, so any number of
  processes may open concurrently and a second open changes nothing.
- A snapshot reload COPYs into a temporary staging table, then upserts and deletes what the
  new snapshot lacks, all in one transaction: readers see the old snapshot or the new one.
- `append_events` is one `INSERT ... ON CONFLICT (event_id) DO NOTHING RETURNING`, so a
  replayed batch changes nothing and the accepted/duplicate counts are exact.

Values only ever travel as query parameters. Library errors (asyncpg, OSError, timeouts)
become `FeatureStoreError` at this boundary.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq

from feature_service import schema
from feature_service.config import PostgresSettings
from feature_service.events import VIEW_EVENTS, Event, EventType, RecordResult
from feature_service.records import (
    ACTIVITY_OF,
    REVENUE_FIELD,
    Activity,
    ActivityEntry,
    UserState,
    counter_field,
)
from feature_service.schema import Migration
from feature_service.store import FeatureStoreError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"

# Advisory lock keys (any fixed bigints unique to this schema).
_MIGRATION_LOCK = 0x7265_6373_7973_0001
_SNAPSHOT_LOCK = 0x7265_6373_7973_0002

# InternalClientError is not an InterfaceError: a connection whose server was SIGKILLed can
# raise it while the pool resets it on release ("cannot switch to state 15; another operation
# is in progress"), which reached RecordEvents as INTERNAL under load (benchmarks/chaos_soak.py).
_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The feature store's migrations in `directory`, by version.

    Raises:
        FeatureStoreError: a file name does not match `NNN_name.sql` or a version repeats.
    """
    try:
        return schema.load_migrations(directory)
    except schema.MigrationError as exc:
        raise FeatureStoreError(str(exc)) from exc


async def apply_migrations(connection: Any, migrations: Sequence[Migration]) -> list[int]:
    """Applies the feature store's `migrations` not yet recorded in `schema_migrations` on
    `connection`, inside the caller's transaction, under the schema's advisory lock; returns
    their versions. Also used by readers of `events` that start before any gateway (the
    experiment sidecar)."""
    return await schema.apply_migrations(
        connection, migrations, "schema_migrations", _MIGRATION_LOCK
    )


@dataclass(frozen=True)
class _SnapshotTable:
    """A table of the offline snapshot and the SQL that reloads it (identifiers only)."""

    name: str
    key: str
    columns: tuple[str, ...]

    @property
    def staging(self) -> str:
        return f"{self.name}_staging"

    def create_staging_sql(self) -> str:
        return f"CREATE TEMP TABLE {self.staging} (LIKE {self.name}) ON COMMIT DROP"

    def upsert_sql(self) -> str:
        cols = ", ".join(self.columns)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in self.columns if c != self.key)
        return (
            f"INSERT INTO {self.name} ({cols}) SELECT {cols} FROM {self.staging} "
            f"ON CONFLICT ({self.key}) DO UPDATE SET {updates}"
        )

    def delete_missing_sql(self) -> str:
        return (
            f"DELETE FROM {self.name} t WHERE NOT EXISTS "
            f"(SELECT 1 FROM {self.staging} s WHERE s.{self.key} = t.{self.key})"
        )


_ITEMS = _SnapshotTable(
    "items",
    "item_id",
    (
        "item_id",
        "title",
        "price",
        "category",
        "subcategory",
        "available",
        "popularity",
        "updated_at",
    ),
)
_USERS = _SnapshotTable(
    "users",
    "user_id",
    ("user_id", "country", "first_seen", "last_seen", "orders", "revenue", "updated_at"),
)

_INSERT_EVENTS = """
INSERT INTO events (event_id, type, user_id, item_id, request_id, ts, quantity, revenue,
                    currency, position)
SELECT * FROM unnest($1::text[], $2::smallint[], $3::text[], $4::text[], $5::text[],
                     $6::timestamptz[], $7::integer[], $8::float8[], $9::text[], $10::integer[])
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""

_RECENT_EVENTS = """
SELECT event_id, type, user_id, item_id, request_id, ts, quantity, revenue, currency, position
FROM events
WHERE user_id = $1 AND type = ANY($2::smallint[]) AND ts >= $3
ORDER BY ts DESC
LIMIT $4
"""

# Newest `$5` events of each activity list (views and clicks share one list).
_RECENT_ACTIVITY = """
SELECT type, item_id, ts FROM (
    SELECT type, item_id, ts,
           row_number() OVER (
               PARTITION BY CASE WHEN type = ANY($4::smallint[]) THEN 0 ELSE type END
               ORDER BY ts DESC) AS rank
    FROM events
    WHERE user_id = $1 AND type = ANY($2::smallint[]) AND ts >= $3
) recent
WHERE rank <= $5
ORDER BY ts DESC
"""

_COUNTERS = """
SELECT type, count(*) AS n, coalesce(sum(revenue), 0) AS revenue
FROM events WHERE user_id = $1 GROUP BY type
"""


@dataclass(frozen=True, slots=True)
class SnapshotCounts:
    """Rows in the snapshot tables after a reload."""

    items: int
    users: int


class PostgresStore:
    """The L3 store; open with `await PostgresStore.open(settings)`, then `close()`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(
        cls, settings: PostgresSettings, migrations_dir: Path = MIGRATIONS_DIR
    ) -> PostgresStore:
        """Creates the pool (up to `pool_size` connections) and applies pending migrations.

        Raises:
            FeatureStoreError: Postgres is unreachable or a migration failed.
        """
        password = settings.password.get_secret_value() if settings.password else None
        try:
            pool = await asyncpg.create_pool(
                settings.dsn,
                password=password,
                min_size=1,
                max_size=settings.pool_size,
                timeout=settings.timeout_s,
                command_timeout=settings.timeout_s,
            )
        except _ERRORS as exc:
            raise FeatureStoreError(f"postgres: cannot connect: {exc!r}") from exc
        store = cls(pool)
        try:
            await store.migrate(load_migrations(migrations_dir))
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        """Closes the pool, waiting for borrowed connections to come back."""
        await self._pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self, operation: str) -> AsyncIterator[Any]:
        """A pooled connection; library errors inside become FeatureStoreError."""
        try:
            async with self._pool.acquire() as connection:
                yield connection
        except _ERRORS as exc:
            raise FeatureStoreError(f"postgres: {operation} failed: {exc!r}") from exc

    async def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        """Applies the migrations not yet recorded in `schema_migrations`; returns their versions.

        Everything runs in one transaction holding an advisory lock, so concurrent callers
        queue up and the later ones find nothing to do.
        """
        async with self._connection("migrate") as connection, connection.transaction():
            return await apply_migrations(connection, migrations)

    async def applied_migrations(self) -> list[tuple[int, str]]:
        """(version, name) of every applied migration, in order."""
        async with self._connection("read migrations") as connection:
            rows = await connection.fetch(
                "SELECT version, name FROM schema_migrations ORDER BY version"
            )
        return [(row["version"], row["name"]) for row in rows]

    async def load_snapshot(
        self,
        items: pa.Table,
        users: pa.Table,
        updated_at: datetime,
        source: str = "",
        force: bool = True,
    ) -> SnapshotCounts | None:
        """Replaces the items and users tables with these snapshot tables, atomically.

        Args:
            source: identifies the snapshot (a content hash), recorded with it.
            force: load even when the stored snapshot has the same `source`.

        Returns:
            The row counts, or None when the snapshot was already loaded (`force` False).

        Raises:
            FeatureStoreError: a row is invalid or Postgres failed; nothing changed then.
        """
        item_rows = _records(items, _ITEMS.columns, updated_at)
        user_rows = _records(users, _USERS.columns, updated_at)
        async with self._connection("load snapshot") as connection, connection.transaction():
            # Serialises loaders: concurrent openers find the snapshot loaded and skip it.
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _SNAPSHOT_LOCK)
            stored = await connection.fetchval("SELECT source FROM snapshot_state")
            if not force and stored == source:
                return None
            for table, rows in ((_ITEMS, item_rows), (_USERS, user_rows)):
                await connection.execute(table.create_staging_sql())
                await connection.copy_records_to_table(
                    table.staging, records=rows, columns=list(table.columns)
                )
                await connection.execute(table.upsert_sql())
                await connection.execute(table.delete_missing_sql())
            await connection.execute(
                """
                INSERT INTO snapshot_state (id, source, loaded_at) VALUES (true, $1, $2)
                ON CONFLICT (id) DO UPDATE SET source = EXCLUDED.source,
                                               loaded_at = EXCLUDED.loaded_at
                """,
                source,
                updated_at,
            )
            counts = await connection.fetchrow(
                "SELECT (SELECT count(*) FROM items) AS items,"
                " (SELECT count(*) FROM users) AS users"
            )
        return SnapshotCounts(items=counts["items"], users=counts["users"])

    async def load_snapshot_files(
        self, data_dir: Path, updated_at: datetime, force: bool = False
    ) -> SnapshotCounts | None:
        """`load_snapshot` from the offline pipeline's `items.parquet` and `users.parquet`,
        skipped (None) when Postgres already holds these exact files unless `force`.

        Raises:
            FeatureStoreError: the files are unreadable or the load failed.
        """
        paths = (data_dir / ITEMS_FILE, data_dir / USERS_FILE)
        try:
            digest = hashlib.sha256()
            for path in paths:
                digest.update(path.read_bytes())
            items = pq.read_table(paths[0], columns=list(_ITEMS.columns[:-1]))
            users = pq.read_table(paths[1], columns=list(_USERS.columns[:-1]))
        except (OSError, pa.ArrowException) as exc:
            raise FeatureStoreError(f"snapshot files in {data_dir} unreadable: {exc}") from exc
        return await self.load_snapshot(
            items, users, updated_at, source=f"sha256:{digest.hexdigest()}", force=force
        )

    async def insert_events(self, events: Sequence[Event]) -> list[Event]:
        """Stores the batch in one transaction; returns the events that were new.

        Raises:
            FeatureStoreError: nothing was stored.
        """
        if not events:
            return []
        columns = (
            [e.event_id for e in events],
            [int(e.type) for e in events],
            [e.user_id for e in events],
            [e.item_id for e in events],
            [e.request_id for e in events],
            [e.timestamp for e in events],
            [e.quantity for e in events],
            [e.revenue for e in events],
            [e.currency for e in events],
            [e.position for e in events],
        )
        async with self._connection("append events") as connection:
            rows = await connection.fetch(_INSERT_EVENTS, *columns)
        new_ids = {row["event_id"] for row in rows}
        new: list[Event] = []
        for event in events:
            # A batch may repeat an id: only its first occurrence was stored.
            if event.event_id in new_ids:
                new_ids.discard(event.event_id)
                new.append(event)
        return new

    async def append_events(self, events: Sequence[Event]) -> RecordResult:
        """Stores the batch; events whose id is already stored count as duplicates."""
        new = await self.insert_events(events)
        return RecordResult(accepted=len(new), duplicates=len(events) - len(new))

    async def recent_events(
        self, user_id: str, types: Sequence[EventType], since: datetime, limit: int
    ) -> list[Event]:
        """The user's newest `limit` events of `types` at or after `since`, newest first."""
        async with self._connection("read recent events") as connection:
            rows = await connection.fetch(
                _RECENT_EVENTS, user_id, [int(t) for t in types], since, limit
            )
        return [
            Event(
                event_id=row["event_id"],
                type=EventType(row["type"]),
                user_id=row["user_id"],
                item_id=row["item_id"],
                request_id=row["request_id"],
                timestamp=row["ts"],
                quantity=row["quantity"],
                revenue=row["revenue"],
                currency=row["currency"],
                position=row["position"],
            )
            for row in rows
        ]

    async def user_state(self, user_id: str, since: datetime, per_activity: int) -> UserState:
        """The user's snapshot membership, activity lists since `since` and event counters."""
        types = [int(t) for t in ACTIVITY_OF]
        views = [int(t) for t in VIEW_EVENTS]
        async with self._connection("read user") as connection:
            known = await connection.fetchval(
                "SELECT EXISTS (SELECT 1 FROM users WHERE user_id = $1)", user_id
            )
            activity_rows = await connection.fetch(
                _RECENT_ACTIVITY, user_id, types, since, views, per_activity
            )
            counter_rows = await connection.fetch(_COUNTERS, user_id)
        recent: dict[Activity, list[ActivityEntry]] = {a: [] for a in Activity}
        for row in activity_rows:
            recent[ACTIVITY_OF[EventType(row["type"])]].append(
                (row["ts"].timestamp(), row["item_id"])
            )
        counters: dict[str, float] = {}
        for row in counter_rows:
            event_type = EventType(row["type"])
            counters[counter_field(event_type)] = float(row["n"])
            if event_type is EventType.PURCHASE:
                counters[REVENUE_FIELD] = float(row["revenue"])
        return UserState(user_id=user_id, known=bool(known), recent=recent, counters=counters)


def _records(
    table: pa.Table, columns: tuple[str, ...], updated_at: datetime
) -> list[tuple[Any, ...]]:
    """Rows of `table` in `columns` order; `updated_at` is the last column, naive times are UTC.

    Raises:
        FeatureStoreError: a column is missing.
    """
    missing = [c for c in columns[:-1] if c not in table.column_names]
    if missing:
        raise FeatureStoreError(f"snapshot table lacks columns {missing}")
    values: list[list[Any]] = []
    for name in columns[:-1]:
        column = table.column(name)
        if pa.types.is_timestamp(column.type) and column.type.tz is None:
            column = column.cast(pa.timestamp("us", tz="UTC"))
        values.append(column.to_pylist())
    stamp = updated_at if updated_at.tzinfo else updated_at.replace(tzinfo=UTC)
    return [(*row, stamp) for row in zip(*values, strict=True)]
