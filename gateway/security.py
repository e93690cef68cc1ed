"""Access control at the gRPC boundary: TLS credentials, token authentication, rate limiting.

Guards run in the boundary interceptor before a handler; each raises a `ServiceError`
(UNAUTHENTICATED, RESOURCE_EXHAUSTED) that the interceptor maps like any other. Tokens are
compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection, Mapping
from typing import Protocol

import grpc
import limits
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from gateway.config import AuthSettings, ConfigError, TlsSettings
from gateway.errors import ResourceExhausted, Unauthenticated

# RPCs that record or change state; Recommend, health and reflection stay open.
PROTECTED_METHODS = frozenset(
    {
        "/recsys.v1.RecommendationService/RecordEvents",
        *(
            f"/recsys.v1.ExperimentAdminService/{method}"
            for method in (
                "ListExperiments",
                "GetExperiment",
                "SetWeights",
                "StopExperiment",
                "RollbackExperiment",
            )
        ),
    }
)


class Guard(Protocol):
    """Checks one call before its handler runs; raises a ServiceError to refuse it."""

    def check(self, method: str, metadata: Mapping[str, str], peer: str) -> None:
        """Raises when the call must not proceed."""
        ...


def load_token(auth: AuthSettings) -> bytes | None:
    """The configured token (from the setting or its file), or None when none is required.

    Raises:
        ConfigError: a token is required but not configured, or the file cannot be read.
    """
    token: str | None = None
    if auth.token is not None:
        token = auth.token.get_secret_value()
    elif auth.token_file is not None:
        try:
            token = auth.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"serving.auth.token_file: cannot read: {exc.strerror}") from exc
    if token:
        return token.encode()
    if auth.required:
        raise ConfigError(
            "serving.auth: a token is required (set RECSYS__SERVING__AUTH__TOKEN "
            "or serving.auth.token_file)"
        )
    return None


class TokenGuard:
    """Requires `authorization: Bearer <token>` on the protected methods."""

    def __init__(self, token: bytes, protected: Collection[str] = PROTECTED_METHODS) -> None:
        self._expected = b"Bearer " + token
        self._protected = frozenset(protected)

    def check(self, method: str, metadata: Mapping[str, str], peer: str) -> None:
        if method not in self._protected:
            return
        presented = metadata.get("authorization", "").encode()
        if not hmac.compare_digest(presented, self._expected):
            raise Unauthenticated("missing or invalid token: send 'authorization: Bearer <token>'")


class RateLimitGuard:
    """At most `limit` calls per client (peer address) in a moving window."""

    def __init__(self, limit: str) -> None:
        self._limit = limits.parse(limit)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._text = limit

    def check(self, method: str, metadata: Mapping[str, str], peer: str) -> None:
        if not self._limiter.hit(self._limit, _client_of(peer)):
            raise ResourceExhausted(f"rate limit of {self._text} per client exceeded; retry later")


def _client_of(peer: str) -> str:
    """`ipv4:10.0.0.5:51234` -> `ipv4:10.0.0.5` (the port changes per connection)."""
    host, _, port = peer.rpartition(":")
    return host if host and port.isdigit() else peer


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured PEM files, or None for plaintext.

    Raises:
        ConfigError: a configured file cannot be read.
    """
    if tls.cert_file is None or tls.key_file is None:
        return None
    try:
        chain = tls.cert_file.read_bytes()
        key = tls.key_file.read_bytes()
        client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    except OSError as exc:
        raise ConfigError(f"serving.tls: cannot read {exc.filename}: {exc.strerror}") from exc
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
