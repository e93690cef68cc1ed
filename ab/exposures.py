"""Exposure logging off the hot path: the gateway hands each Recommend outcome to a bounded
queue and returns; a background task writes batches to a sink.

An exposure says which user saw which ranked items (and which of them were new to the user)
from which experiment arm, under which request id; a user in experiments of several layers
gives one exposure per experiment for one response. Outcome events (`RecordEvents`) carrying
that request id are attributed to the arm through it. When the queue is full (the sink is down
or slow for long), new exposures are dropped and counted, never blocking a response: the
experiment's sample-ratio check then sees the loss if it is uneven between arms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from feature_service.sqlite_file import SqliteFile

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Exposure:
    """One Recommend response as the experiment sees it."""

    request_id: str
    user_id: str
    experiment: str
    variant: str
    model_version: str
    item_ids: tuple[str, ...]
    timestamp: datetime
    """Timezone-aware (UTC)."""
    assignment_probability: float = 1.0
    """Probability of this arm for this user (1 for hash splits; below 1 under a bandit)."""
    new_item_ids: tuple[str, ...] = ()
    """The items of `item_ids` new to the user: not among the purchases the gateway knew for
    them when it served the list (what `ab.variant_sums` counts as discovery)."""


class ExposureSink(Protocol):
    """Durable storage of exposure batches (SQLite locally, Postgres in production)."""

    async def write(self, batch: Sequence[Exposure]) -> None:
        """Stores the batch idempotently by (request id, experiment)."""
        ...


class ExposureRecorder:
    """Bounded, batched, asynchronous exposure writer. Use `async with`.

    Args:
        sink: where batches go.
        capacity: most exposures waiting; beyond it new ones are dropped (and counted).
        batch_size: most exposures per write.
        flush_interval_s: longest an exposure waits for a batch to fill.
    """

    def __init__(
        self,
        sink: ExposureSink,
        capacity: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
    ) -> None:
        self._sink = sink
        self._queue: asyncio.Queue[Exposure] = asyncio.Queue(maxsize=capacity)
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._task: asyncio.Task[None] | None = None
        self._batch_full = asyncio.Event()
        self.dropped = 0
        """Exposures refused because the queue was full."""
        self.written = 0
        """Exposures handed to the sink successfully."""

    async def __aenter__(self) -> ExposureRecorder:
        self._task = asyncio.create_task(self._run(), name="exposure-recorder")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Writes what is queued, then stops."""
        await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def record(self, exposure: Exposure) -> bool:
        """Queues one exposure without waiting; False when it had to be dropped."""
        try:
            self._queue.put_nowait(exposure)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        if self._queue.qsize() >= self._batch_size - 1:
            self._batch_full.set()  # with the one the writer holds, a batch is ready
        return True

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # One timer per batch, not one wait_for per exposure (each made a task: ~25 us of
            # every Recommend): wait until the batch is full or the interval is over, then take
            # what has queued.
            self._batch_full.clear()
            if self._queue.qsize() < self._batch_size - 1:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._flush_interval_s):
                        await self._batch_full.wait()
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write_with_retry(batch)
            for _ in batch:
                self._queue.task_done()

    async def _write_with_retry(self, batch: list[Exposure]) -> None:
        delay = 0.1
        while True:
            try:
                await self._sink.write(batch)
                self.written += len(batch)
                return
            except Exception:  # a failing sink must not kill the recorder; retry with backoff
                _log.exception("writing %d exposures failed; retrying in %.1f s", len(batch), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


# Item lists are space-separated (item ids never contain whitespace: the API validates them).
EXPOSURES_SCHEMA = """
CREATE TABLE IF NOT EXISTS exposures (
    request_id  TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    experiment  TEXT NOT NULL,
    variant     TEXT NOT NULL,
    model_version TEXT NOT NULL,
    item_ids    TEXT NOT NULL,
    ts_us       INTEGER NOT NULL,
    assignment_probability REAL NOT NULL,
    new_item_ids TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (request_id, experiment)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS exposures_experiment_ts ON exposures (experiment, ts_us);
"""

# Files written before layers and novelty (key request_id alone, no new_item_ids) are rebuilt
# in place once; their exposures keep no novelty (nothing was recorded).
_UPGRADE_V1 = """
ALTER TABLE exposures RENAME TO exposures_v1;
DROP INDEX IF EXISTS exposures_experiment_ts;
{schema}
INSERT INTO exposures (request_id, user_id, experiment, variant, model_version, item_ids,
                       ts_us, assignment_probability)
SELECT request_id, user_id, experiment, variant, model_version, item_ids, ts_us,
       assignment_probability
FROM exposures_v1;
DROP TABLE exposures_v1;
"""


def upgrade_exposure_file(connection: sqlite3.Connection) -> None:
    """Brings an exposure file of an earlier release to `EXPOSURES_SCHEMA` (idempotent; under
    the write lock, so sibling gateways opening the file at once upgrade it once)."""
    with connection:
        connection.execute("BEGIN IMMEDIATE")
        columns = {row[1] for row in connection.execute("PRAGMA table_info(exposures)")}
        script = EXPOSURES_SCHEMA
        if columns and "new_item_ids" not in columns:
            script = _UPGRADE_V1.format(schema=EXPOSURES_SCHEMA)
        for statement in script.split(";"):
            if statement.strip():
                connection.execute(statement)


class SqliteExposureSink:
    """Exposures in a local SQLite file (the embedded profile); `INSERT OR IGNORE` by request
    id makes a retried batch harmless."""

    def __init__(self, file: SqliteFile) -> None:
        self._file = file

    @classmethod
    async def open(cls, path: Path) -> SqliteExposureSink:
        """Opens (creating if needed) the exposure table in `path`."""
        file = await SqliteFile.open(path, "", durable=False, name="exposures")
        try:
            await file.run(upgrade_exposure_file)
        except BaseException:
            await file.close()
            raise
        return cls(file)

    async def write(self, batch: Sequence[Exposure]) -> None:
        rows = [
            (
                e.request_id,
                e.user_id,
                e.experiment,
                e.variant,
                e.model_version,
                " ".join(e.item_ids),
                int(e.timestamp.timestamp() * 1_000_000),
                e.assignment_probability,
                " ".join(e.new_item_ids),
            )
            for e in batch
        ]

        def insert(connection: sqlite3.Connection) -> None:
            with connection:
                # The write lock up front: sibling gateway processes share the file, and a
                # writer waits its turn (busy timeout) rather than failing mid-transaction.
                connection.execute("BEGIN IMMEDIATE")
                connection.executemany(
                    "INSERT OR IGNORE INTO exposures VALUES (?,?,?,?,?,?,?,?,?)", rows
                )

        await self._file.run(insert)

    async def counts(self, experiment: str) -> dict[str, int]:
        """Exposures per variant of `experiment`."""

        def read(connection: sqlite3.Connection) -> dict[str, int]:
            cursor = connection.execute(
                "SELECT variant, COUNT(*) FROM exposures WHERE experiment = ? GROUP BY variant",
                (experiment,),
            )
            return {variant: int(n) for variant, n in cursor.fetchall()}

        return await self._file.run(read)

    async def close(self) -> None:
        """Closes the file."""
        await self._file.close()
