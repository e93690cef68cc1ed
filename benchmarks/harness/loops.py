"""The closed loop the in-process benchmarks drive a server with: `concurrency` callers on one
event loop, each sending its next call as soon as the previous one answered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

_P = TypeVar("_P")


@dataclass(frozen=True)
class LoopResult:
    """What one closed loop did."""

    latencies_s: list[float]
    """Seconds of each call that answered, in completion order."""
    errors: int
    """Calls that raised one of the expected errors."""
    wall_s: float
    """Seconds from the first call to the last answer."""


async def closed_loop(
    call: Callable[[_P], Awaitable[object]],
    payloads: Sequence[_P],
    concurrency: int,
    *,
    calls: int | None = None,
    duration_s: float | None = None,
    errors: tuple[type[BaseException], ...] = (),
) -> LoopResult:
    """Runs `concurrency` callers, cycling through `payloads`, until `calls` calls were sent or
    `duration_s` passed (exactly one of the two). An exception in `errors` counts as an error;
    any other ends the loop.
    """
    if (calls is None) == (duration_s is None):
        raise ValueError("give exactly one of calls and duration_s")
    stop = time.perf_counter() + (duration_s or 0.0)
    latencies: list[float] = []
    failed = 0
    issued = 0

    def more() -> bool:
        return issued < calls if calls is not None else time.perf_counter() < stop

    async def caller() -> None:
        nonlocal issued, failed
        while more():
            payload = payloads[issued % len(payloads)]
            issued += 1
            started = time.perf_counter()
            try:
                await call(payload)
            except errors:
                failed += 1
            else:
                latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return LoopResult(latencies, failed, time.perf_counter() - began)
