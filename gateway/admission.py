"""Admission control: bound the calls running at once, shed the rest early.

Recommend and RecordEvents each have their own bound (`serving.admission`,
`serving.events_admission`), so a flood of event batches cannot take the slots, or the event
loop, that recommendations need.

One event loop runs every request of a process. Without a bound, an overload admits every call
(up to `serving.max_concurrent_rpcs`) and they all slow down together: each one's share of the
CPU shrinks until most run out of their deadline after doing most of the work, and the
throughput of useful answers collapses. With a bound, at most `max_running` pipelines run;
a request that finds them all busy waits in a FIFO queue for at most `max_queue_wait_ms` (and
never past its own deadline), and is refused with RESOURCE_EXHAUSTED when the wait runs out or
`max_queued` requests are already waiting. A refused request costs almost nothing and tells the
client (or nginx, or a retry policy) to back off or try another replica, while the admitted
ones keep their latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from gateway.config import AdmissionSettings
from gateway.deadline import Budget
from gateway.errors import DeadlineExceeded, ResourceExhausted
from gateway.prometheus_metrics import Metrics


class AdmissionControl:
    """A semaphore of `max_running` slots with a bounded, time-limited FIFO queue, for the calls
    of one `method` (metrics are labelled with it)."""

    def __init__(
        self, settings: AdmissionSettings, metrics: Metrics, method: str = "Recommend"
    ) -> None:
        self._max_running = settings.max_running
        self._max_queued = settings.max_queued
        self._max_wait_s = settings.max_queue_wait_ms / 1000.0
        self._method = method
        self._slots = asyncio.Semaphore(settings.max_running)
        self._waiting = 0
        self._running_gauge = metrics.pipelines_running.labels(method)
        self._queued_gauge = metrics.pipelines_queued.labels(method)
        self._observe_wait = metrics.admission_wait.labels(method).observe
        shed = metrics.requests_shed
        self._shed_queue_full = shed.labels(method, "queue_full")
        self._shed_queue_timeout = shed.labels(method, "queue_timeout")
        self._shed_deadline = shed.labels(method, "deadline")

    @property
    def waiting(self) -> int:
        """Requests queued for a slot now."""
        return self._waiting

    @contextlib.asynccontextmanager
    async def admit(self, budget: Budget) -> AsyncIterator[None]:
        """Hold one slot for the body; wait for one when none is free.

        Raises:
            ResourceExhausted: `max_queued` requests already wait, or no slot was freed within
                `max_queue_wait_ms`.
            DeadlineExceeded: the request's own deadline ran out while it waited.
        """
        if self._slots.locked():
            await self._wait_for_slot(budget)
        else:
            # A free slot: acquire() returns without suspending.
            await self._slots.acquire()
        self._running_gauge.inc()
        try:
            yield
        finally:
            self._running_gauge.dec()
            self._slots.release()

    async def _wait_for_slot(self, budget: Budget) -> None:
        if self._waiting >= self._max_queued:
            self._shed_queue_full.inc()
            raise ResourceExhausted(
                f"server overloaded: {self._max_running} {self._method} calls running and "
                f"{self._waiting} waiting; retry with backoff or on another replica"
            )
        remaining = budget.remaining()
        limit = min(self._max_wait_s, remaining)
        started = time.perf_counter()
        self._waiting += 1
        self._queued_gauge.inc()
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=max(limit, 0.0))
        except TimeoutError:
            if limit < self._max_wait_s:
                self._shed_deadline.inc()
                raise DeadlineExceeded(
                    f"deadline exceeded while waiting for a free {self._method} slot "
                    "(server overloaded)"
                ) from None
            self._shed_queue_timeout.inc()
            raise ResourceExhausted(
                f"server overloaded: no {self._method} slot freed within "
                f"{self._max_wait_s * 1000:g} ms; retry with backoff or on another replica"
            ) from None
        finally:
            self._waiting -= 1
            self._queued_gauge.dec()
            self._observe_wait(time.perf_counter() - started)
