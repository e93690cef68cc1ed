"""The gRPC service config the client's channels carry: retries on UNAVAILABLE for the calls
that are safe to repeat, and the default deadlines the clients put on every call.

Both RPCs of `recsys.v1.RecommendationService` are idempotent: Recommend only reads, and
RecordEvents stores each event once by its `event_id` (the server counts a repeat as a
duplicate), so repeating either is harmless. UNAVAILABLE is the transient failure: no
connection, a refused stream, a gateway draining or not ready yet.
Retries are throttled per channel (gRPC's retryThrottling): when most calls fail, the client
stops retrying instead of multiplying the load.

The deadlines are not in the service config: in gRPC Python a service-config `timeout` expires
calls early, at once when it is short (grpc/grpc#40633; with grpcio 1.85 a 1 s timeout failed
every call within 1 ms, and cut an explicit 5 s deadline as short). The clients pass the
policy's deadline with each call instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

RECOMMENDATION_SERVICE = "recsys.v1.RecommendationService"
_MAX_ATTEMPTS_LIMIT = 5  # gRPC caps maxAttempts at 5 whatever the config says


@dataclass(frozen=True)
class CallPolicy:
    """Deadlines and retries of a client's calls."""

    recommend_timeout_s: float = 0.25
    """Deadline of a Recommend call, all its attempts together, unless the call sets one."""
    record_events_timeout_s: float = 2.0
    """Deadline of a RecordEvents call (a batch is acknowledged once durable: an fsync)."""
    max_attempts: int = 3
    """Attempts of an idempotent call failing with UNAVAILABLE, the first one included (1-5)."""
    initial_backoff_s: float = 0.02
    """Upper bound of the first random backoff between attempts."""
    max_backoff_s: float = 0.2
    """Upper bound of any backoff between attempts."""

    def __post_init__(self) -> None:
        for name in ("recommend_timeout_s", "record_events_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 1 <= self.max_attempts <= _MAX_ATTEMPTS_LIMIT:
            raise ValueError(
                f"max_attempts must be 1 to {_MAX_ATTEMPTS_LIMIT}, got {self.max_attempts}"
            )
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError(
                "backoffs must satisfy 0 < initial_backoff_s <= max_backoff_s, got "
                f"{self.initial_backoff_s} and {self.max_backoff_s}"
            )


def _duration(seconds: float) -> str:
    """A protobuf JSON Duration ("0.02s"), as the service config expects."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def service_config(policy: CallPolicy) -> dict[str, Any]:
    """The service config (gRPC's JSON form, as a dict) for `policy`: the retry policy of both
    RecommendationService calls, and retry throttling."""
    config: dict[str, Any] = {"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}
    if policy.max_attempts > 1:  # gRPC rejects a retryPolicy of a single attempt
        config["methodConfig"] = [
            {
                "name": [{"service": RECOMMENDATION_SERVICE}],
                "retryPolicy": {
                    "maxAttempts": policy.max_attempts,
                    "initialBackoff": _duration(policy.initial_backoff_s),
                    "maxBackoff": _duration(policy.max_backoff_s),
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return config


def channel_options(policy: CallPolicy) -> list[tuple[str, str | int]]:
    """gRPC channel options that install `policy`'s service config (and keep it: a resolver
    that returns a config of its own does not replace it)."""
    return [
        ("grpc.service_config", json.dumps(service_config(policy))),
        ("grpc.enable_retries", 1),
        ("grpc.service_config_disable_resolution", 1),
    ]
