"""The shared SQLite event log's feed and `EventTail`: what one opener (gateway process) stores
reaches the others once, in commit order, and never comes back to its writer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from feature_service.event_log import SqliteEventLog
from feature_service.event_tail import EventTail
from feature_service.events import Event, EventType

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def _event(event_id: str, kind: EventType = EventType.PURCHASE, user: str = "u1") -> Event:
    return Event(
        event_id=event_id,
        type=kind,
        user_id=user,
        item_id="85123A",
        request_id="r1",
        timestamp=NOW,
        quantity=2,
        revenue=5.1,
        currency="GBP",
        position=0,
    )


@pytest.fixture
async def logs(tmp_path: Path) -> AsyncIterator[tuple[SqliteEventLog, SqliteEventLog]]:
    """Two openers of one file, as two gateway processes have it."""
    first = await SqliteEventLog.open(tmp_path / "events.sqlite3")
    second = await SqliteEventLog.open(tmp_path / "events.sqlite3")
    yield first, second
    await first.close()
    await second.close()


async def test_a_sibling_reads_what_another_opener_stored_once_in_commit_order(
    logs: tuple[SqliteEventLog, SqliteEventLog],
) -> None:
    first, second = logs
    await first.append([_event("a1"), _event("a2", EventType.PRODUCT_VIEW)])
    await second.append([_event("b1")])
    await first.append([_event("a1"), _event("a3")])  # a1 again: a duplicate, not fed twice

    seen_by_second, sequence = await second.appended_after(0, limit=100)
    assert [e.event_id for e in seen_by_second] == ["a1", "a2", "a3"]  # not its own b1
    assert seen_by_second[0] == _event("a1")  # every field survives the round trip
    seen_by_first, _ = await first.appended_after(0, limit=100)
    assert [e.event_id for e in seen_by_first] == ["b1"]
    assert await second.appended_after(sequence, limit=100) == ([], sequence)


async def test_the_start_up_replay_and_the_feed_meet_without_gap_or_overlap(
    logs: tuple[SqliteEventLog, SqliteEventLog],
) -> None:
    first, second = logs
    await first.append([_event("old")])
    replayed, sequence = await second.recent(NOW - timedelta(days=1), per_user=10)
    await first.append([_event("new")])
    later, _ = await second.appended_after(sequence, limit=100)
    assert [e.event_id for e in replayed] == ["old"]
    assert [e.event_id for e in later] == ["new"]


async def test_writers_take_turns_without_losing_a_batch(
    logs: tuple[SqliteEventLog, SqliteEventLog],
) -> None:
    first, second = logs
    results = await asyncio.gather(
        *(
            log.append([_event(f"{name}{i}-{j}") for j in range(20)])
            for i in range(10)
            for name, log in (("a", first), ("b", second))
        )
    )
    assert sum(r.accepted for r in results) == 400
    assert await first.count() == 400
    fed, _ = await first.appended_after(0, limit=1000)
    assert len(fed) == 200 and all(e.event_id.startswith("b") for e in fed)


async def test_tail_pages_through_everything_and_hands_it_over(
    logs: tuple[SqliteEventLog, SqliteEventLog],
) -> None:
    first, second = logs
    await first.append([_event(f"a{i}") for i in range(25)])
    await second.append([_event("own")])
    received: list[list[str]] = []
    tail = EventTail(
        second,
        lambda events: received.append([e.event_id for e in events]),
        after=0,
        interval_s=60,
        batch_size=10,
    )
    assert await tail.poll() == 25
    assert [len(batch) for batch in received] == [10, 10, 5]  # the last page also read "own"
    assert [i for batch in received for i in batch] == [f"a{i}" for i in range(25)]
    assert await tail.poll() == 0
    assert tail.received == 25


async def test_running_tail_delivers_within_its_interval_and_survives_a_failing_consumer(
    logs: tuple[SqliteEventLog, SqliteEventLog], caplog: pytest.LogCaptureFixture
) -> None:
    first, second = logs
    received: list[str] = []
    arrived = {name: asyncio.Event() for name in ("poison", "x", "y")}

    def record(events: list[Event]) -> None:
        for event in events:
            arrived[event.event_id].set()
        if any(e.event_id == "poison" for e in events):
            raise ValueError("consumer bug")
        received.extend(e.event_id for e in events)

    async with EventTail(second, record, after=0, interval_s=0.02) as tail:
        for event_id in ("poison", "x", "y"):  # one at a time: "poison" in a batch of its own
            await first.append([_event(event_id)])
            await asyncio.wait_for(arrived[event_id].wait(), timeout=5)
    assert received == ["x", "y"]  # the failed batch is skipped, the tail goes on
    assert tail.sequence == 3
    assert any(
        r.levelno == logging.ERROR and "another process failed" in r.getMessage()
        for r in caplog.records
    )
