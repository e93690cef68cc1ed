"""The event spool: durable append, exact round trip, replay empties it, failure keeps it; a
file is adopted by another process only once its writer is gone."""

from __future__ import annotations

import asyncio
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
    await spool.close()
    assert not spool.path.exists()  # empty: nothing left for anyone


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
    await spool.close()


async def test_failed_replay_keeps_the_file(tmp_path: Path) -> None:
    spool = EventSpool(tmp_path / "spool.jsonl")
    await spool.append([_event(1)])

    async def down(batch: Sequence[Event]) -> RecordResult:
        raise FeatureStoreError("postgres down")

    with pytest.raises(FeatureStoreError):
        await spool.replay(down)
    assert spool.pending()
    await spool.close()
    assert spool.pending()  # kept for the next process


async def test_unwritable_spool_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(FeatureStoreError, match="event spool"):
        await EventSpool(blocker / "spool.jsonl").append([_event(1)])


async def _count(batch: Sequence[Event]) -> RecordResult:
    return RecordResult(accepted=len(batch), duplicates=0)


async def test_one_path_two_live_writers_is_an_error(tmp_path: Path) -> None:
    first = EventSpool(tmp_path / "spool.jsonl")
    second = EventSpool(tmp_path / "spool.jsonl", lock_wait_s=0.2)
    await first.append([_event(1)])
    with pytest.raises(FeatureStoreError, match="held by another live process"):
        await asyncio.wait_for(second.append([_event(2)]), 30)
    await first.close()
    await second.append([_event(2)])  # free again
    assert second.pending_events() == 2
    await second.close()


async def test_a_live_writers_file_is_not_adopted_a_closed_ones_is(tmp_path: Path) -> None:
    other = EventSpool(tmp_path / "event-spool2.jsonl")
    await other.append([_event(1), _event(2)])
    mine = EventSpool(tmp_path / "event-spool1.jsonl", adopt="event-spool*.jsonl")
    assert mine.orphans() == []  # its writer holds it
    assert await mine.replay(_count) == 0
    assert other.pending_events() == 2
    await other.close()  # (a crash drops the lock the same way)
    assert mine.orphans() == [other.path]
    received: list[Event] = []

    async def store(batch: Sequence[Event]) -> RecordResult:
        received.extend(batch)
        return await _count(batch)

    assert await mine.replay(store) == 2
    assert received == [_event(1), _event(2)]
    assert not other.path.exists() and mine.orphans() == []
    await mine.close()


async def test_a_failed_adoption_keeps_the_file(tmp_path: Path) -> None:
    left = tmp_path / "event-spool9.jsonl"
    writer = EventSpool(left)
    await writer.append([_event(1)])
    await writer.close()
    mine = EventSpool(tmp_path / "event-spool1.jsonl", adopt="event-spool*.jsonl")

    async def down(batch: Sequence[Event]) -> RecordResult:
        raise FeatureStoreError("postgres down")

    with pytest.raises(FeatureStoreError):
        await mine.replay(down)
    assert EventSpool(left).pending_events() == 1
    assert await mine.replay(_count) == 1
    await mine.close()
