"""One SQLite connection driven from one dedicated thread, so the event loop never blocks on
disk. Used by the embedded profile's event log and exposure log.

Several gateway processes may open the same file (`make run` with `serving.processes` > 1):
WAL lets readers go on while one process writes, and a writer that finds the file locked waits
up to `BUSY_TIMEOUT_S` for its turn instead of failing at once."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

BUSY_TIMEOUT_S = 5.0
"""Longest a statement waits for another process's write lock (SQLite's busy timeout); a
write holds it for one batch, milliseconds."""


class SqliteFile:
    """A WAL-mode SQLite file; open with `await SqliteFile.open(...)`, then `close()`."""

    def __init__(self, connection: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self._connection = connection
        self._executor = executor

    @classmethod
    async def open(cls, path: Path, schema: str, *, durable: bool, name: str) -> SqliteFile:
        """Opens (creating if needed) `path` and applies `schema` (idempotent DDL).

        Args:
            durable: `synchronous=FULL`: a committed transaction survives a crash.
            name: names the worker thread.
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

        def connect() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
            )
            connection.execute("PRAGMA journal_mode=WAL")
            if durable:
                connection.execute("PRAGMA synchronous=FULL")
            connection.executescript(schema)
            return connection

        return cls(await asyncio.get_running_loop().run_in_executor(executor, connect), executor)

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Runs `work(connection)` on the file's thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, work, self._connection
        )

    async def close(self) -> None:
        """Closes the file; pending work finishes first."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._connection.close)
        self._executor.shutdown(wait=True)
