"""The per-client rate limit (a token bucket kept as one number per client), on a fake clock."""

from __future__ import annotations

import pytest

from gateway.errors import ResourceExhausted
from gateway.security import RateLimitGuard

METHOD = "/recsys.v1.RecommendationService/Recommend"


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _admitted(guard: RateLimitGuard, peer: str, calls: int) -> int:
    admitted = 0
    for _ in range(calls):
        try:
            guard.check(METHOD, {}, peer)
        except ResourceExhausted:
            continue
        admitted += 1
    return admitted


def test_a_full_bucket_admits_the_limit_at_once_then_one_per_interval() -> None:
    clock = FakeClock()
    guard = RateLimitGuard("5/second", clock=clock)
    assert _admitted(guard, "ipv4:10.0.0.5:1234", 8) == 5
    with pytest.raises(ResourceExhausted, match="rate limit of 5/second per client exceeded"):
        guard.check(METHOD, {}, "ipv4:10.0.0.5:1234")
    clock.now += 0.2  # one token back (5 per second)
    assert _admitted(guard, "ipv4:10.0.0.5:1234", 3) == 1
    clock.now += 1.0  # a whole period: the bucket is full again
    assert _admitted(guard, "ipv4:10.0.0.5:1234", 8) == 5


def test_a_steady_rate_at_the_limit_is_never_refused() -> None:
    clock = FakeClock()
    guard = RateLimitGuard("100/minute", clock=clock)
    for _ in range(1000):
        guard.check(METHOD, {}, "ipv4:10.0.0.5:1")
        clock.now += 0.6


def test_clients_are_told_apart_by_address_not_port() -> None:
    clock = FakeClock()
    guard = RateLimitGuard("2/minute", clock=clock)
    assert _admitted(guard, "ipv4:10.0.0.5:1111", 1) == 1
    assert _admitted(guard, "ipv4:10.0.0.5:2222", 2) == 1  # same client, new connection
    assert _admitted(guard, "ipv6:[::1]:3333", 2) == 2
    assert _admitted(guard, "unix:/tmp/socket", 3) == 2


def test_idle_clients_are_forgotten_when_the_table_fills() -> None:
    clock = FakeClock()
    guard = RateLimitGuard("10/second", clock=clock, max_clients=4)
    for i in range(4):
        guard.check(METHOD, {}, f"ipv4:10.0.0.{i}:1")
    assert guard.tracked_clients == 4
    clock.now += 1.0  # every bucket has refilled
    guard.check(METHOD, {}, "ipv4:10.0.1.1:1")
    assert guard.tracked_clients == 1
    # While every tracked client is active the table grows, and sweeps get rarer.
    for i in range(10):
        guard.check(METHOD, {}, f"ipv4:10.0.2.{i}:1")
    assert guard.tracked_clients == 11
