"""Durable, idempotent event log in a local SQLite file (the embedded, single-node default).

A batch is committed in one transaction with `synchronous=FULL` before `append` returns, so an
acknowledged event survives a crash; `INSERT OR IGNORE` on the `event_id` primary key makes a
replayed batch change nothing. SQLite calls run on the file's own thread (`SqliteFile`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from feature_service.events import Event, EventType, RecordResult
from feature_service.sqlite_file import SqliteFile
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

    def __init__(self, file: SqliteFile) -> None:
        self._file = file

    @classmethod
    async def open(cls, path: Path) -> SqliteEventLog:
        """Opens (creating if needed) the log at `path`."""
        return cls(await SqliteFile.open(path, _SCHEMA, durable=True, name="event-log"))

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

        def write(connection: sqlite3.Connection) -> int:
            before = connection.total_changes
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(
                    "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows
                )
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return connection.total_changes - before

        try:
            accepted = await self._file.run(write)
        except sqlite3.Error as exc:
            raise FeatureStoreError(f"event log write failed: {exc}") from exc
        return RecordResult(accepted=accepted, duplicates=len(events) - accepted)

    async def recent(self, since: datetime, per_user: int) -> list[Event]:
        """Events at or after `since`, at most the newest `per_user` of each user, oldest first."""

        def read(
            connection: sqlite3.Connection,
        ) -> list[tuple[str, int, str, str, str, int, int, float, str, int]]:
            cursor = connection.execute(
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

        rows = await self._file.run(read)
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

        def read(connection: sqlite3.Connection) -> int:
            return int(connection.execute("SELECT COUNT(*) FROM events").fetchone()[0])

        return await self._file.run(read)

    async def close(self) -> None:
        """Closes the file; pending writes finish first."""
        await self._file.close()
