"""Admission control: slots, the bounded FIFO queue, its time limit and the request deadline."""

from __future__ import annotations

import asyncio

import pytest

from gateway.admission import AdmissionControl
from gateway.config import AdmissionSettings
from gateway.deadline import Budget
from gateway.errors import DeadlineExceeded, ResourceExhausted
from gateway.prometheus_metrics import Metrics


def _control(
    max_running: int = 2, max_queued: int = 2, max_queue_wait_ms: float = 1000.0
) -> tuple[AdmissionControl, Metrics]:
    metrics = Metrics()
    settings = AdmissionSettings(
        max_running=max_running, max_queued=max_queued, max_queue_wait_ms=max_queue_wait_ms
    )
    return AdmissionControl(settings, metrics), metrics


def _shed(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "recsys_admission_shed_requests_total", {"method": "Recommend", "reason": reason}
    )
    return value or 0.0


def _gauge(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name, {"method": "Recommend"})
    assert value is not None
    return value


async def _hold(
    control: AdmissionControl, release: asyncio.Event, log: list[str], name: str
) -> None:
    async with control.admit(Budget(5.0)):
        log.append(f"start {name}")
        await release.wait()
        log.append(f"end {name}")


async def test_requests_within_the_limit_run_at_once() -> None:
    control, metrics = _control(max_running=2)
    release = asyncio.Event()
    log: list[str] = []
    tasks = [asyncio.create_task(_hold(control, release, log, n)) for n in "ab"]
    await asyncio.sleep(0.01)
    assert log == ["start a", "start b"]
    assert _gauge(metrics, "recsys_admission_running_requests") == 2
    release.set()
    await asyncio.gather(*tasks)
    assert _gauge(metrics, "recsys_admission_running_requests") == 0
    # Nobody waited, so no wait was recorded.
    wait_count = metrics.registry.get_sample_value(
        "recsys_admission_wait_seconds_count", {"method": "Recommend"}
    )
    assert wait_count == 0


async def test_waiting_requests_start_in_arrival_order_when_slots_free() -> None:
    control, metrics = _control(max_running=1, max_queued=3)
    release = asyncio.Event()
    log: list[str] = []
    first = asyncio.create_task(_hold(control, release, log, "a"))
    await asyncio.sleep(0.01)
    waiting = []
    for name in "bcd":
        waiting.append(asyncio.create_task(_hold(control, release, log, name)))
        await asyncio.sleep(0.005)
    assert control.waiting == 3
    assert _gauge(metrics, "recsys_admission_queued_requests") == 3
    release.set()
    await asyncio.gather(first, *waiting)
    assert [entry for entry in log if entry.startswith("start")] == [
        "start a",
        "start b",
        "start c",
        "start d",
    ]
    assert control.waiting == 0
    assert _gauge(metrics, "recsys_admission_queued_requests") == 0
    wait_count = metrics.registry.get_sample_value(
        "recsys_admission_wait_seconds_count", {"method": "Recommend"}
    )
    assert wait_count == 3


async def test_a_full_queue_refuses_at_once() -> None:
    control, metrics = _control(max_running=1, max_queued=1)
    release = asyncio.Event()
    log: list[str] = []
    running = asyncio.create_task(_hold(control, release, log, "a"))
    queued = asyncio.create_task(_hold(control, release, log, "b"))
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ResourceExhausted, match="1 Recommend calls running and 1 waiting"):
        async with control.admit(Budget(5.0)):
            pytest.fail("admitted past a full queue")
    assert loop.time() - started < 0.05
    assert _shed(metrics, "queue_full") == 1
    release.set()
    await asyncio.gather(running, queued)
    assert log.count("end b") == 1


async def test_a_request_waits_at_most_the_queue_limit() -> None:
    control, metrics = _control(max_running=1, max_queued=4, max_queue_wait_ms=30)
    release = asyncio.Event()
    running = asyncio.create_task(_hold(control, release, [], "a"))
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ResourceExhausted, match="no Recommend slot freed within 30 ms"):
        async with control.admit(Budget(5.0)):
            pytest.fail("admitted while the slot was held")
    assert 0.025 <= loop.time() - started < 0.5
    assert _shed(metrics, "queue_timeout") == 1
    assert control.waiting == 0
    # The timed-out waiter left nothing behind: the next request gets the freed slot.
    release.set()
    await running
    async with control.admit(Budget(5.0)):
        assert _gauge(metrics, "recsys_admission_running_requests") == 1


async def test_the_request_deadline_caps_the_wait() -> None:
    control, metrics = _control(max_running=1, max_queue_wait_ms=1000)
    release = asyncio.Event()
    running = asyncio.create_task(_hold(control, release, [], "a"))
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DeadlineExceeded, match="waiting for a free Recommend slot"):
        async with control.admit(Budget(0.03)):
            pytest.fail("admitted while the slot was held")
    assert loop.time() - started < 0.5
    assert _shed(metrics, "deadline") == 1
    assert _shed(metrics, "queue_timeout") == 0
    release.set()
    await running


async def test_an_error_in_the_pipeline_frees_its_slot() -> None:
    control, metrics = _control(max_running=1, max_queued=0)
    with pytest.raises(RuntimeError):
        async with control.admit(Budget(5.0)):
            raise RuntimeError("stage failed")
    assert _gauge(metrics, "recsys_admission_running_requests") == 0
    async with control.admit(Budget(5.0)):
        assert _gauge(metrics, "recsys_admission_running_requests") == 1


async def test_each_method_has_its_own_slots_and_metrics() -> None:
    metrics = Metrics()
    settings = AdmissionSettings(max_running=1, max_queued=0, max_queue_wait_ms=1000)
    recommend = AdmissionControl(settings, metrics, "Recommend")
    events = AdmissionControl(settings, metrics, "RecordEvents")
    # Recommend's only slot is taken; an event batch still gets one of its own.
    async with recommend.admit(Budget(5.0)), events.admit(Budget(5.0)):
        # The refusal names the method whose slots are full.
        with pytest.raises(ResourceExhausted, match="1 RecordEvents calls running and 0 waiting"):
            async with events.admit(Budget(5.0)):
                pass
    shed = metrics.registry.get_sample_value(
        "recsys_admission_shed_requests_total", {"method": "RecordEvents", "reason": "queue_full"}
    )
    assert shed == 1
    assert _shed(metrics, "queue_full") == 0
