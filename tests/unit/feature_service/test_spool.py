"""The event spool: durable append, exact round trip, replay empties it, failure keeps it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from feature_service.events import Event, EventType, RecordResult
from feature_service.spool import EventSpool
from feature_service.store import FeatureStoreError


def _event(i: int) -> Event:
    return Event(
        f"e{i}",
        EventType.PURCHASE,
        "17850",
        "85123A",
        "r1",
        datetime(2026, 11, 26, 12, 0, i, tzinfo=UTC),
        2,
        5.9,
        "GBP",
        3,
    )


async def test_round_trip_and_replay(tmp_path: Path) -> None:
    spool = EventSpool(tmp_path / "spool.jsonl")
    assert not spool.pending()
    await spool.append([_event(1), _event(2)])
    await spool.append([_event(3)])
    assert spool.pending()
    received: list[Event] = []

    async def store(batch: Sequence[Event]) -> RecordResult:
        received.extend(batch)
        return RecordResult(accepted=len(batch), duplicates=0)

    assert await spool.replay(store, batch_size=2) == 3
    assert received == [_event(1), _event(2), _event(3)]
    assert not spool.pending()


async def test_pending_events_are_counted_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    spool = EventSpool(path)
    assert spool.pending_events() == 0
    await spool.append([_event(1), _event(2)])
    await spool.append([_event(3)])
    assert spool.pending_events() == 3
    # What a crashed process left is counted by the next one.
    assert EventSpool(path).pending_events() == 3

    async def store(batch: Sequence[Event]) -> RecordResult:
        return RecordResult(accepted=len(batch), duplicates=0)

    await spool.replay(store)
    assert spool.pending_events() == 0


async def test_failed_replay_keeps_the_file(tmp_path: Path) -> None:
    spool = EventSpool(tmp_path / "spool.jsonl")
    await spool.append([_event(1)])

    async def down(batch: Sequence[Event]) -> RecordResult:
        raise FeatureStoreError("postgres down")

    with pytest.raises(FeatureStoreError):
        await spool.replay(down)
    assert spool.pending()


async def test_unwritable_spool_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(FeatureStoreError, match="event spool"):
        await EventSpool(blocker / "spool.jsonl").append([_event(1)])
