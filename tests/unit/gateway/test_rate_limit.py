"""The per-client rate limit (a token bucket kept as one number per client), on a fake clock,
and who the client is behind a trusted proxy."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_settings
from gateway.errors import ResourceExhausted
from gateway.security import ClientIdentity, RateLimitGuard

METHOD = "/recsys.v1.RecommendationService/Recommend"
LOCAL_CONFIG = Path(__file__).resolve().parents[3] / "infra" / "config" / "local.yaml"


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


PROXY = "ipv4:10.1.0.7:40000"
"""nginx or the ingress: the peer every proxied call comes from."""


def _behind_proxy(limit: str, clock: FakeClock) -> RateLimitGuard:
    identity = ClientIdentity([ipaddress.ip_network("10.1.0.0/24")])
    return RateLimitGuard(limit, clock=clock, identity=identity)


def _admitted_from(guard: RateLimitGuard, metadata: dict[str, str], peer: str, calls: int) -> int:
    admitted = 0
    for _ in range(calls):
        try:
            guard.check(METHOD, metadata, peer)
        except ResourceExhausted:
            continue
        admitted += 1
    return admitted


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() -> None:
    guard = _behind_proxy("3/minute", FakeClock())
    noisy = {"x-forwarded-for": "203.0.113.9", "x-real-ip": "203.0.113.9"}
    quiet = {"x-forwarded-for": "198.51.100.4", "x-real-ip": "198.51.100.4"}
    assert _admitted_from(guard, noisy, PROXY, 10) == 3
    assert _admitted_from(guard, quiet, PROXY, 3) == 3
    assert guard.tracked_clients == 2


def test_the_last_forwarded_hop_is_the_client() -> None:
    identity = ClientIdentity([ipaddress.ip_network("10.1.0.0/24")])
    # The client wrote a fake first hop; the trusted proxy appended what it saw.
    assert identity.of({"x-forwarded-for": "1.2.3.4, 203.0.113.9"}, PROXY) == "ipv4:203.0.113.9"
    assert identity.of({"x-real-ip": "2001:db8::5"}, PROXY) == "ipv6:[2001:db8::5]"
    # X-Forwarded-For wins over X-Real-IP; a mapped IPv4 address is the IPv4 client.
    both = {"x-forwarded-for": "::ffff:203.0.113.9", "x-real-ip": "10.1.0.3"}
    assert identity.of(both, PROXY) == "ipv4:203.0.113.9"
    # A proxy behind a trusted one is seen through (IPv4-mapped peer of a dual-stack socket).
    assert identity.of({"x-real-ip": "198.51.100.4"}, "ipv6:[::ffff:10.1.0.9]:1") == (
        "ipv4:198.51.100.4"
    )


def test_forwarded_headers_from_an_untrusted_peer_are_ignored() -> None:
    identity = ClientIdentity([ipaddress.ip_network("10.1.0.0/24")])
    spoofed = {"x-forwarded-for": "203.0.113.9", "x-real-ip": "203.0.113.9"}
    assert identity.of(spoofed, "ipv4:192.0.2.50:5000") == "ipv4:192.0.2.50"
    assert identity.of(spoofed, "unix:/tmp/socket") == "unix:/tmp/socket"
    # No proxies configured: nobody is believed.
    assert ClientIdentity().of(spoofed, PROXY) == "ipv4:10.1.0.7"


def test_a_garbled_forwarded_address_falls_back_to_the_proxy() -> None:
    identity = ClientIdentity([ipaddress.ip_network("10.1.0.0/24")])
    assert identity.of({"x-forwarded-for": "203.0.113.9, not-an-ip"}, PROXY) == "ipv4:10.1.0.7"
    assert identity.of({"x-forwarded-for": "203.0.113.9:443"}, PROXY) == "ipv4:10.1.0.7"
    assert identity.of({"x-real-ip": "bogus"}, PROXY) == "ipv4:10.1.0.7"
    assert identity.of({}, PROXY) == "ipv4:10.1.0.7"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("127.0.0.1", ["127.0.0.1/32"]),
        ("10.0.0.0/8, ::1", ["10.0.0.0/8", "::1/128"]),
        ('["192.168.0.0/16"]', ["192.168.0.0/16"]),
        ("", []),
    ],
)
def test_trusted_proxies_setting(override: str, expected: list[str]) -> None:
    environ = {"RECSYS__SERVING__TRUSTED_PROXIES": override}
    settings = load_settings(LOCAL_CONFIG, environ)
    assert [str(n) for n in settings.serving.trusted_proxies] == expected


def test_a_trusted_proxy_that_is_no_address_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="serving.trusted_proxies.0: value is not a valid IPv4"):
        load_settings(LOCAL_CONFIG, {"RECSYS__SERVING__TRUSTED_PROXIES": "nginx"})
