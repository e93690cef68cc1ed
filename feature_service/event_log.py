"""Durable, idempotent event log in a local SQLite file (the embedded, single-node default).

A batch is committed in one transaction with `synchronous=FULL` before `append` returns, so an
acknowledged event survives a crash; `INSERT OR IGNORE` on the `event_id` primary key makes a
replayed batch change nothing. SQLite calls run on one dedicated thread so the event loop never
blocks on disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from feature_service.events import Event, EventType, RecordResult
from feature_service.store import FeatureStoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id    TEXT PRIMARY KEY,
    type        INTEGER NOT NULL,
    user_id     TEXT NOT NULL,
    item_id     TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    ts_us       INTEGER NOT NULL,
    quantity    INTEGER NOT NULL,
    revenue     REAL NOT NULL,
    currency    TEXT NOT NULL,
    position    INTEGER NOT NULL,
    received_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_user_ts ON events (user_id, ts_us);
"""


def _to_us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


class SqliteEventLog:
    """Append-only event log; open with `await SqliteEventLog.open(path)`, then `close()`."""

    def __init__(self, connection: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self._connection = connection
        self._executor = executor

    @classmethod
    async def open(cls, path: Path) -> SqliteEventLog:
        """Opens (creating if needed) the log at `path`."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-log")

        def connect() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.executescript(_SCHEMA)
            return connection

        loop = asyncio.get_running_loop()
        return cls(await loop.run_in_executor(executor, connect), executor)

    async def append(self, events: Sequence[Event]) -> RecordResult:
        """Stores the batch durably; events whose id is already stored are counted as duplicates."""
        now_us = _to_us(datetime.now(UTC))
        rows = [
            (
                e.event_id,
                int(e.type),
                e.user_id,
                e.item_id,
                e.request_id,
                _to_us(e.timestamp),
                e.quantity,
                e.revenue,
                e.currency,
                e.position,
                now_us,
            )
            for e in events
        ]

        def write() -> int:
            before = self._connection.total_changes
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                self._connection.executemany(
                    "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows
                )
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")
            return self._connection.total_changes - before

        try:
            accepted = await asyncio.get_running_loop().run_in_executor(self._executor, write)
        except sqlite3.Error as exc:
            raise FeatureStoreError(f"event log write failed: {exc}") from exc
        return RecordResult(accepted=accepted, duplicates=len(events) - accepted)

    async def recent(self, since: datetime, per_user: int) -> list[Event]:
        """Events at or after `since`, at most the newest `per_user` of each user, oldest first."""

        def read() -> list[tuple[str, int, str, str, str, int, int, float, str, int]]:
            cursor = self._connection.execute(
                """
                SELECT event_id, type, user_id, item_id, request_id, ts_us, quantity, revenue,
                       currency, position
                FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ts_us DESC) AS r
                      FROM events WHERE ts_us >= ?)
                WHERE r <= ? ORDER BY ts_us
                """,
                (_to_us(since), per_user),
            )
            return cursor.fetchall()

        rows = await asyncio.get_running_loop().run_in_executor(self._executor, read)
        return [
            Event(
                event_id=r[0],
                type=EventType(r[1]),
                user_id=r[2],
                item_id=r[3],
                request_id=r[4],
                timestamp=datetime.fromtimestamp(r[5] / 1e6, UTC),
                quantity=r[6],
                revenue=r[7],
                currency=r[8],
                position=r[9],
            )
            for r in rows
        ]

    async def count(self) -> int:
        """Number of stored events."""

        def read() -> int:
            return int(self._connection.execute("SELECT COUNT(*) FROM events").fetchone()[0])

        return await asyncio.get_running_loop().run_in_executor(self._executor, read)

    async def close(self) -> None:
        """Closes the file; pending writes finish first."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._connection.close)
        self._executor.shutdown(wait=True)
