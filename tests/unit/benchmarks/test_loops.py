"""The in-process load loops of the benchmarks (`benchmarks.harness.loops`)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from benchmarks.harness.loops import closed_loop, open_loop


async def test_open_loop_sends_at_the_rate_whatever_is_unanswered_and_counts_errors() -> None:
    sent: list[int] = []

    async def call(payload: int) -> None:
        sent.append(payload)
        await asyncio.sleep(0.05)  # slower than the gaps between arrivals
        if payload == 1:
            raise TimeoutError("counted")

    result = await open_loop(
        call, [0, 1, 2], 400.0, 0.25, np.random.default_rng(0), errors=(TimeoutError,)
    )

    assert 50 <= len(sent) <= 150  # ~100 arrivals in 0.25 s at 400/s
    assert sent[:6] == [0, 1, 2, 0, 1, 2]  # the payloads in turn
    assert result.errors == sent.count(1)
    assert len(result.latencies_s) == len(sent) - result.errors
    assert min(result.latencies_s) >= 0.05
    # open: calls overlapped, so the loop took far less than one call after another
    assert result.wall_s < 0.25 + 0.05 * 5


async def test_an_unexpected_error_ends_either_loop() -> None:
    async def call(payload: int) -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        await open_loop(call, [0], 100.0, 0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="a bug"):
        await closed_loop(call, [0], 2, calls=4)
