"""A local append-only spool for event batches that could not reach Postgres.

`RecordEvents` acknowledges only durable batches. When Postgres is down, the batch is appended
to this file as JSON lines and fsynced before the acknowledgement; a background task replays
the file into Postgres once it is back (idempotent by event id, so a replay interrupted by a
crash and done again stores nothing twice) and then empties it. A file left by a crashed
process is replayed when the next one starts with the same path.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from feature_service.events import Event, EventType, RecordResult
from feature_service.store import FeatureStoreError


def _encode(event: Event) -> str:
    row: dict[str, Any] = asdict(event)
    row["type"] = int(event.type)
    row["timestamp"] = event.timestamp.isoformat()
    return json.dumps(row, separators=(",", ":"))


def _decode(line: str) -> Event:
    row = json.loads(line)
    row["type"] = EventType(row["type"])
    row["timestamp"] = datetime.fromisoformat(row["timestamp"])
    return Event(**row)


class EventSpool:
    """Batches appended durably to one file; `replay` hands them back in order."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = asyncio.Lock()

    @property
    def path(self) -> Path:
        """The spool file."""
        return self._path

    def pending(self) -> bool:
        """Whether the file holds events not yet replayed."""
        try:
            return self._path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def pending_events(self) -> int:
        """Events in the file not yet replayed (one JSON line each); read from the file, so it
        counts what a crashed process left too."""
        try:
            with self._path.open("rb") as handle:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
        except FileNotFoundError:
            return 0

    async def append(self, events: Sequence[Event]) -> None:
        """Appends the batch and fsyncs it before returning.

        Raises:
            FeatureStoreError: the file could not be written; nothing may be acknowledged.
        """
        text = "".join(_encode(event) + "\n" for event in events)

        def write() -> None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with self._path.open("a", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())

        async with self._lock:
            try:
                await asyncio.to_thread(write)
            except OSError as exc:
                raise FeatureStoreError(f"event spool {self._path}: {exc}") from exc

    async def replay(
        self, store: Callable[[Sequence[Event]], Awaitable[RecordResult]], batch_size: int = 500
    ) -> int:
        """Stores every spooled event with `store`, then empties the file; returns how many
        events were newly stored. On failure the file is left as it was.

        Raises:
            FeatureStoreError: `store` failed (Postgres still down); try again later.
        """
        async with self._lock:
            if not self.pending():
                return 0
            lines = (await asyncio.to_thread(self._path.read_text, encoding="utf-8")).splitlines()
            events = [_decode(line) for line in lines if line.strip()]
            stored = 0
            for start in range(0, len(events), batch_size):
                stored += (await store(events[start : start + batch_size])).accepted
            await asyncio.to_thread(self._path.unlink)
            return stored
