"""The loops the in-process benchmarks drive a server with, on one event loop: closed
(`concurrency` callers, each sending its next call as soon as the previous one answered) and
open (calls arriving at a rate, whatever is still unanswered)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

_P = TypeVar("_P")


@dataclass(frozen=True)
class LoopResult:
    """What one loop did."""

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


async def open_loop(
    call: Callable[[_P], Awaitable[object]],
    payloads: Sequence[_P],
    rate: float,
    duration_s: float,
    rng: np.random.Generator,
    *,
    errors: tuple[type[BaseException], ...] = (),
) -> LoopResult:
    """Poisson arrivals at `rate` calls/s for `duration_s`, cycling through `payloads`, each
    call started on time whether or not earlier ones answered (how a server sees independent
    clients). An exception in `errors` counts as an error; any other ends the loop."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    failed = 0

    async def one(payload: _P) -> None:
        nonlocal failed
        started = time.perf_counter()
        try:
            await call(payload)
        except errors:
            failed += 1
        else:
            latencies.append(time.perf_counter() - started)

    tasks: list[asyncio.Future[None]] = []
    began = due = loop.time()
    while (due := due + float(rng.exponential(1.0 / rate))) - began <= duration_s:
        if (delay := due - loop.time()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(payloads[len(tasks) % len(payloads)])))
    await asyncio.gather(*tasks)
    return LoopResult(latencies, failed, loop.time() - began)
