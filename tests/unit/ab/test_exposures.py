"""The exposure recorder: batching, bounded queue with counted drops, retries, final flush;
the embedded SQLite sink: one row per (request, experiment), files of the earlier layout."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from ab.exposures import Exposure, ExposureRecorder, SqliteExposureSink


def _exposure(i: int) -> Exposure:
    return Exposure(
        f"r{i}",
        "17850",
        "exp",
        "control",
        "popularity",
        ("a", "b"),
        datetime(2026, 1, 1, tzinfo=UTC),
    )


class _Sink:
    """Records batches; fails the first `failures` writes."""

    def __init__(self, failures: int = 0, delay_s: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.failures = failures
        self.delay_s = delay_s

    async def write(self, batch: Sequence[Exposure]) -> None:
        await asyncio.sleep(self.delay_s)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("sink down")
        self.batches.append([e.request_id for e in batch])


async def test_batches_and_flushes_on_exit() -> None:
    sink = _Sink()
    async with ExposureRecorder(sink, batch_size=10, flush_interval_s=0.05) as recorder:
        for i in range(25):
            assert recorder.record(_exposure(i))
    assert [len(b) for b in sink.batches] == [10, 10, 5]
    assert [r for b in sink.batches for r in b] == [f"r{i}" for i in range(25)]
    assert (recorder.written, recorder.dropped) == (25, 0)


async def test_a_full_batch_is_written_at_once_a_partial_one_after_the_interval() -> None:
    sink = _Sink()
    async with ExposureRecorder(sink, batch_size=4, flush_interval_s=0.3) as recorder:
        for i in range(4):
            recorder.record(_exposure(i))
            await asyncio.sleep(0)  # the writer takes the first one as they arrive
        await asyncio.sleep(0.05)
        assert sink.batches == [["r0", "r1", "r2", "r3"]]  # full: not held for the interval
        recorder.record(_exposure(4))
        await asyncio.sleep(0.1)
        assert len(sink.batches) == 1  # partial: waits for company
        await asyncio.sleep(0.4)
        assert sink.batches[1] == ["r4"]


async def test_full_queue_drops_and_counts_without_blocking() -> None:
    sink = _Sink(delay_s=0.2)
    async with ExposureRecorder(sink, capacity=5, batch_size=5, flush_interval_s=0.01) as rec:
        accepted = [rec.record(_exposure(i)) for i in range(12)]
    assert accepted.count(True) == 5
    assert rec.dropped == 7
    assert sum(len(b) for b in sink.batches) == 5


async def test_failing_sink_is_retried_until_it_works() -> None:
    sink = _Sink(failures=2)
    async with ExposureRecorder(sink, batch_size=3, flush_interval_s=0.01) as recorder:
        for i in range(3):
            recorder.record(_exposure(i))
    assert sink.batches == [["r0", "r1", "r2"]]
    assert recorder.written == 3


# The exposure table as released before layered experiments and novelty.
_V1_SCHEMA = """
CREATE TABLE exposures (
    request_id  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    experiment  TEXT NOT NULL,
    variant     TEXT NOT NULL,
    model_version TEXT NOT NULL,
    item_ids    TEXT NOT NULL,
    ts_us       INTEGER NOT NULL,
    assignment_probability REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX exposures_experiment_ts ON exposures (experiment, ts_us);
"""


def _rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(
            "SELECT request_id, experiment, variant, item_ids, new_item_ids FROM exposures"
            " ORDER BY request_id, experiment"
        ).fetchall()


async def test_sqlite_sink_keeps_one_row_per_experiment_with_the_new_items(tmp_path: Path) -> None:
    sink = await SqliteExposureSink.open(tmp_path / "exposures.sqlite3")
    ranker = dataclasses.replace(
        _exposure(1), item_ids=("a", "n1", "n2"), new_item_ids=("n1", "n2")
    )
    surface = dataclasses.replace(ranker, experiment="surface", variant="treatment")
    try:
        await sink.write([ranker, surface])
        await sink.write([ranker])  # a retried batch
        assert await sink.counts("exp") == {"control": 1}
        assert await sink.counts("surface") == {"treatment": 1}
    finally:
        await sink.close()
    assert _rows(tmp_path / "exposures.sqlite3") == [
        ("r1", "exp", "control", "a n1 n2", "n1 n2"),
        ("r1", "surface", "treatment", "a n1 n2", "n1 n2"),
    ]


async def test_a_file_of_the_earlier_layout_is_upgraded_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "exposures.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.executescript(_V1_SCHEMA)
        connection.execute(
            "INSERT INTO exposures VALUES ('r0', 'u', 'exp', 'control', '2', 'a b', 1, 1.0)"
        )
    for _ in range(2):  # a second open finds it upgraded
        sink = await SqliteExposureSink.open(path)
        try:
            await sink.write([dataclasses.replace(_exposure(0), experiment="surface")])
        finally:
            await sink.close()
    assert _rows(path) == [
        ("r0", "exp", "control", "a b", ""),
        ("r0", "surface", "control", "a b", ""),
    ]
