"""The exposure recorder: batching, bounded queue with counted drops, retries, final flush."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from ab.exposures import Exposure, ExposureRecorder


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
