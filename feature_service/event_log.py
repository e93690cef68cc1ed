"""Durable, idempotent event log in a local SQLite file (the embedded, single-node default).

A batch is committed in one transaction with `synchronous=FULL` before `append` returns, so an
acknowledged event survives a crash; `INSERT OR IGNORE` on the `event_id` primary key makes a
replayed batch change nothing. SQLite calls run on the file's own thread (`SqliteFile`).

Several gateway processes on one machine share the file (WAL, one writer at a time, the others
wait). Each stored event also gets a row in `event_feed`: a sequence number in commit order and
the id of the process that wrote it, so a process can read what its siblings appended since it
last looked (`appended_after`, driven by `feature_service.event_tail.EventTail`).
"""

from __future__ import annotations

import secrets
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
-- Commit order of the stored events: writers take turns (BEGIN IMMEDIATE), so a reader that has
-- seen sequence n has seen every event committed before it. AUTOINCREMENT: never reused.
CREATE TABLE IF NOT EXISTS event_feed (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL,
    writer      INTEGER NOT NULL
);
"""

_INSERT_EVENT = "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?)"
_INSERT_FEED = "INSERT INTO event_feed (event_id, writer) VALUES (?, ?)"
_EVENT_COLUMNS = (
    "e.event_id, e.type, e.user_id, e.item_id, e.request_id, e.ts_us, e.quantity, e.revenue,"
    " e.currency, e.position"
)
_EventRow = tuple[str, int, str, str, str, int, int, float, str, int]


def _to_us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def _event(row: _EventRow) -> Event:
    return Event(
        event_id=row[0],
        type=EventType(row[1]),
        user_id=row[2],
        item_id=row[3],
        request_id=row[4],
        timestamp=datetime.fromtimestamp(row[5] / 1e6, UTC),
        quantity=row[6],
        revenue=row[7],
        currency=row[8],
        position=row[9],
    )


class SqliteEventLog:
    """Append-only event log; open with `await SqliteEventLog.open(path)`, then `close()`."""

    def __init__(self, file: SqliteFile) -> None:
        self._file = file
        # Tells this opener's rows in `event_feed` from its siblings'. Random rather than the
        # pid: processes in other pid namespaces (containers) may share the file.
        self._writer = secrets.randbits(62)

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

        writer = self._writer

        def write(connection: sqlite3.Connection) -> int:
            accepted = 0
            connection.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    # rowcount is 0 for a duplicate (ignored): only new events enter the feed.
                    if connection.execute(_INSERT_EVENT, row).rowcount == 1:
                        connection.execute(_INSERT_FEED, (row[0], writer))
                        accepted += 1
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return accepted

        try:
            accepted = await self._file.run(write)
        except sqlite3.Error as exc:
            raise FeatureStoreError(f"event log write failed: {exc}") from exc
        return RecordResult(accepted=accepted, duplicates=len(events) - accepted)

    async def recent(self, since: datetime, per_user: int) -> tuple[list[Event], int]:
        """Events at or after `since`, at most the newest `per_user` of each user, oldest first,
        and the feed sequence they include: `appended_after(sequence)` then returns exactly
        what was stored after them (one read transaction, one snapshot)."""

        def read(connection: sqlite3.Connection) -> tuple[list[_EventRow], int]:
            connection.execute("BEGIN")
            try:
                cursor = connection.execute(
                    f"""
                    SELECT {_EVENT_COLUMNS}
                    FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ts_us DESC)
                                    AS r
                          FROM events WHERE ts_us >= ?) AS e
                    WHERE r <= ? ORDER BY ts_us
                    """,
                    (_to_us(since), per_user),
                )
                rows = cursor.fetchall()
                sequence = connection.execute(
                    "SELECT COALESCE(MAX(seq), 0) FROM event_feed"
                ).fetchone()[0]
            finally:
                connection.execute("COMMIT")
            return rows, int(sequence)

        rows, sequence = await self._file.run(read)
        return [_event(r) for r in rows], sequence

    async def appended_after(self, sequence: int, limit: int) -> tuple[list[Event], int]:
        """Events other openers of the file stored after feed `sequence`, in commit order, at
        most `limit` feed rows' worth, and the sequence to ask from next time. This opener's
        own events are skipped (its caller applied them when it appended them).

        Raises:
            FeatureStoreError: the file cannot be read.
        """
        writer = self._writer

        def read(connection: sqlite3.Connection) -> tuple[list[_EventRow], int]:
            cursor = connection.execute(
                f"""
                SELECT f.seq, f.writer, {_EVENT_COLUMNS}
                FROM event_feed AS f JOIN events AS e ON e.event_id = f.event_id
                WHERE f.seq > ? ORDER BY f.seq LIMIT ?
                """,
                (sequence, limit),
            )
            rows = cursor.fetchall()
            last = rows[-1][0] if rows else sequence
            return [row[2:] for row in rows if row[1] != writer], int(last)

        try:
            rows, last = await self._file.run(read)
        except sqlite3.Error as exc:
            raise FeatureStoreError(f"event log read failed: {exc}") from exc
        return [_event(r) for r in rows], last

    async def count(self) -> int:
        """Number of stored events."""

        def read(connection: sqlite3.Connection) -> int:
            return int(connection.execute("SELECT COUNT(*) FROM events").fetchone()[0])

        return await self._file.run(read)

    async def close(self) -> None:
        """Closes the file; pending writes finish first."""
        await self._file.close()
