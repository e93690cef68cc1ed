"""A local append-only spool for event batches that could not reach Postgres.

`RecordEvents` acknowledges only durable batches. When Postgres is down, the batch is appended
to this file as JSON lines and fsynced before the acknowledgement; a background task replays
the file into Postgres once it is back (idempotent by event id, so a replay interrupted by a
crash and done again stores nothing twice) and then empties it.

Files are adopted whatever process wrote them. The writing process holds an exclusive
`flock` on its file from its first use until it closes; the kernel drops it when the process
dies, however it dies. A file left by a dead process is replayed by the next one that starts
with the same path, and by any process whose `adopt` pattern matches it in the same
directory (on Kubernetes the pod's own volume: a StatefulSet's replacement pod, or a sibling
process of `make run` after the process count went down). A file whose writer is alive is
never touched, so two processes never interleave or truncate each other's batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from feature_service.events import Event, EventType, RecordResult
from feature_service.store import FeatureStoreError

_log = logging.getLogger(__name__)

Store = Callable[[Sequence[Event]], Awaitable[RecordResult]]
# How long a starting process waits for its own file while another one adopts it.
_LOCK_WAIT_S = 10.0


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


def _is_current(handle: IO[bytes], path: Path) -> bool:
    """Whether `handle` is still the file at `path` (not one unlinked by an adopter)."""
    try:
        return os.path.samestat(os.fstat(handle.fileno()), path.stat())
    except FileNotFoundError:
        return False


def _try_lock(handle: IO[bytes]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _lock_own(path: Path, wait_s: float) -> IO[bytes]:
    """Opens `path` for appending under an exclusive lock, waiting up to `wait_s` while an
    adopter replays a file left there.

    Raises:
        FeatureStoreError: a live process keeps the lock (two processes configured with one
            spool path), or the file cannot be opened.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = path.open("ab")
        except OSError as exc:
            raise FeatureStoreError(f"event spool {path}: {exc}") from exc
        if _try_lock(handle):
            if _is_current(handle, path):
                return handle
            handle.close()  # adopted and unlinked meanwhile: lock the new file
            continue
        handle.close()
        if time.monotonic() >= deadline:
            raise FeatureStoreError(
                f"event spool {path}: held by another live process; give each gateway "
                "process its own feature_store.spool_path"
            )
        time.sleep(0.05)


def _read_events(path: Path) -> list[Event]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [_decode(line) for line in lines if line.strip()]


async def _store_all(events: Sequence[Event], store: Store, batch_size: int) -> int:
    stored = 0
    for start in range(0, len(events), batch_size):
        stored += (await store(events[start : start + batch_size])).accepted
    return stored


class EventSpool:
    """Batches appended durably to one file; `replay` hands them back in order, then those of
    adoptable files (see the module docstring).

    Args:
        path: this process's spool file.
        adopt: a glob, in `path`'s directory, of other spool files to replay once their
            writer is gone (e.g. `event-spool*.jsonl`); None adopts only `path`.
        lock_wait_s: how long the first use waits while another process adopts `path`.
    """

    def __init__(
        self, path: Path, adopt: str | None = None, lock_wait_s: float = _LOCK_WAIT_S
    ) -> None:
        self._path = path
        self._adopt = adopt
        self._lock_wait_s = lock_wait_s
        self._handle: IO[bytes] | None = None
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

    def orphans(self) -> list[Path]:
        """Other non-empty files matching `adopt` whose writer is gone (nobody holds their
        lock right now)."""
        if self._adopt is None:
            return []
        own = self._path.resolve()
        found = []
        for candidate in sorted(self._path.parent.glob(self._adopt)):
            with contextlib.suppress(OSError):  # vanished or unreadable: not ours to replay
                if candidate.resolve() == own or not candidate.stat().st_size:
                    continue
                with candidate.open("rb") as probe:
                    if _try_lock(probe):  # released again when the probe closes
                        found.append(candidate)
        return found

    def _own(self) -> IO[bytes]:
        if self._handle is None:
            self._handle = _lock_own(self._path, self._lock_wait_s)
        return self._handle

    async def append(self, events: Sequence[Event]) -> None:
        """Appends the batch and fsyncs it before returning.

        Raises:
            FeatureStoreError: the file could not be written; nothing may be acknowledged.
        """
        data = "".join(_encode(event) + "\n" for event in events).encode()

        def write() -> None:
            handle = self._own()
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

        async with self._lock:
            try:
                await asyncio.to_thread(write)
            except OSError as exc:
                raise FeatureStoreError(f"event spool {self._path}: {exc}") from exc

    async def replay(self, store: Store, batch_size: int = 500) -> int:
        """Stores every spooled event with `store`, then empties the file, then does the same
        for each adoptable file whose writer is gone (deleting it); returns how many events
        were newly stored. On failure the file being replayed is left as it was.

        Raises:
            FeatureStoreError: `store` failed (Postgres still down); try again later.
        """
        async with self._lock:
            stored = 0
            if self.pending():
                handle = await asyncio.to_thread(self._own)
                events = await asyncio.to_thread(_read_events, self._path)
                stored += await _store_all(events, store, batch_size)
                await asyncio.to_thread(os.ftruncate, handle.fileno(), 0)
            for orphan in await asyncio.to_thread(self.orphans):
                stored += await self._adopt_file(orphan, store, batch_size)
            return stored

    async def _adopt_file(self, path: Path, store: Store, batch_size: int) -> int:
        """Replays and deletes `path` if no live process holds it; 0 if one does."""

        def lock() -> IO[bytes] | None:
            try:
                handle = path.open("rb")
            except FileNotFoundError:
                return None
            if _try_lock(handle) and _is_current(handle, path):
                return handle
            handle.close()  # its writer is alive (or it was just replaced)
            return None

        handle = await asyncio.to_thread(lock)
        if handle is None:
            return 0
        try:
            events = await asyncio.to_thread(_read_events, path)
            stored = await _store_all(events, store, batch_size)
            await asyncio.to_thread(path.unlink)  # still under its lock: no writer meanwhile
        finally:
            handle.close()
        _log.info("adopted the event spool %s: %d events newly stored", path, stored)
        return stored

    async def close(self) -> None:
        """Releases the file: deleted when empty, kept (for the next process) otherwise."""
        async with self._lock:
            handle, self._handle = self._handle, None
            if handle is None:
                return
            with contextlib.suppress(OSError):
                if os.fstat(handle.fileno()).st_size == 0:
                    self._path.unlink()
            handle.close()
