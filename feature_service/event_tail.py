"""Follows the shared embedded event log for the events that sibling gateway processes store.

With several gateway processes on one machine (`make run` with `serving.processes` > 1) a
RecordEvents call lands in one of them, while the same user's next Recommend may land in
another. Each process keeps state in memory that events change (the embedded store's recent
views and purchases, the ranker's purchase histories); what they share is the event log on disk.
An `EventTail` reads, every `interval_s`, the events the other processes appended since it last
looked (in commit order, through the log's feed) and hands them to `record`, so a sibling's
event reaches this process's features within about one interval. The process's own events are
skipped: its RecordEvents path applied them when it stored them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from feature_service.event_log import SqliteEventLog
from feature_service.events import Event
from feature_service.store import FeatureStoreError

_log = logging.getLogger(__name__)


class EventTail:
    """Hands the events other processes store in `log` to `record`. Use `async with`.

    Args:
        log: the shared event log.
        record: takes in one batch of stored events, oldest first (called on the event loop;
            it must not block).
        after: the feed sequence this process's state already covers (the store's start-up
            replay, `EmbeddedFeatureStore.replayed_through`).
        interval_s: pause between reads; bounds how stale a sibling's event can be here.
        batch_size: most feed rows read at once.
    """

    def __init__(
        self,
        log: SqliteEventLog,
        record: Callable[[list[Event]], None],
        *,
        after: int,
        interval_s: float,
        batch_size: int = 1000,
    ) -> None:
        self._log = log
        self._record = record
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.sequence = after
        """The feed sequence read up to."""
        self.received = 0
        """Events handed to `record` so far."""

    async def __aenter__(self) -> EventTail:
        self._task = asyncio.create_task(self._run(), name="event-tail")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def poll(self) -> int:
        """Reads everything stored since the last read and hands it over; returns how many
        events came from other processes.

        Raises:
            FeatureStoreError: the log cannot be read.
        """
        received = 0
        while True:
            events, sequence = await self._log.appended_after(self.sequence, self._batch_size)
            if sequence == self.sequence:
                return received
            # Advanced before `record` runs: a batch it fails on is logged, not retried forever.
            self.sequence = sequence
            if events:
                try:
                    self._record(events)
                except Exception:  # a bug in a consumer must not stop the tail
                    _log.exception(
                        "applying %d events stored by another process failed", len(events)
                    )
                    continue
                received += len(events)
                self.received += len(events)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.poll()
            except FeatureStoreError as exc:
                if not self._failing:
                    _log.warning("reading other processes' events failed (will retry): %s", exc)
                self._failing = True
                continue
            if self._failing:
                _log.info("reading other processes' events works again")
                self._failing = False
