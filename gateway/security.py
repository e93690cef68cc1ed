"""Access control at the gRPC boundary: TLS credentials, token authentication, rate limiting.

Guards run in the boundary interceptor before a handler; each raises a `ServiceError`
(UNAUTHENTICATED, RESOURCE_EXHAUSTED) that the interceptor maps like any other. Tokens are
compared in constant time and never logged.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Protocol, TypeAlias

import grpc
import limits

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

    metadata_keys: frozenset[str]
    """The metadata keys `check` reads (the interceptor passes only those on)."""

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

    metadata_keys = frozenset({"authorization"})

    def __init__(self, token: bytes, protected: Collection[str] = PROTECTED_METHODS) -> None:
        self._expected = b"Bearer " + token
        self._protected = frozenset(protected)

    def check(self, method: str, metadata: Mapping[str, str], peer: str) -> None:
        if method not in self._protected:
            return
        presented = metadata.get("authorization", "").encode()
        if not hmac.compare_digest(presented, self._expected):
            raise Unauthenticated("missing or invalid token: send 'authorization: Bearer <token>'")


Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

FORWARDED_FOR = "x-forwarded-for"
"""The proxy chain: each proxy appends the address it received the call from."""
REAL_IP = "x-real-ip"
"""The client address nginx saw (`grpc_set_header X-Real-IP $remote_addr`)."""


class ClientIdentity:
    """Who a call comes from, for per-client limits: the peer's address (without the port,
    which changes per connection), or, when the peer is one of `trusted_proxies` (nginx in
    the stack, the ingress in Kubernetes), the client address the proxy forwards.

    Forwarded addresses are believed only from a trusted proxy, since any caller can send
    any header. The client is the last X-Forwarded-For entry, the address the trusted proxy
    itself received the call from (each proxy appends what it saw; entries further left were
    written by others and are not believed, as nginx's realip module does without
    `real_ip_recursive`); without the header, X-Real-IP. Without either, or with a malformed
    one, the proxy itself is the client (as before: one bucket for everything behind it). A
    chain of proxies (cloud load balancer, then ingress) resolves the client at the outermost
    one it trusts and forwards that.
    """

    metadata_keys = frozenset({FORWARDED_FOR, REAL_IP})

    def __init__(self, trusted_proxies: Iterable[Network] = (), max_peers: int = 65_536) -> None:
        self._trusted = tuple(trusted_proxies)
        # Parsing addresses costs ~15 us a call; peers and forwarded values repeat, so each
        # is parsed once (the tables are emptied when full).
        self._peer_trusted: dict[str, bool] = {}
        self._max_peers = max_peers

    def of(self, metadata: Mapping[str, str], peer: str) -> str:
        """The rate-limit key of a call from `peer` (grpc's `ipv4:host:port` form)."""
        client = _client_of(peer)
        if not self._trusted:
            return client
        trusted = self._peer_trusted.get(client)
        if trusted is None:
            if len(self._peer_trusted) >= self._max_peers:
                self._peer_trusted.clear()
            address = _address_of(client)
            trusted = self._peer_trusted[client] = address is not None and any(
                address in network for network in self._trusted
            )
        if not trusted:
            return client
        forwarded = metadata.get(FORWARDED_FOR)
        key = _forwarded_key(forwarded.rpartition(",")[2] if forwarded else metadata.get(REAL_IP))
        return client if key is None else key


class RateLimitGuard:
    """At most `limit` calls per client, as a token bucket of `limit`'s size refilled evenly
    over its period: "5000/second" admits a burst of 5,000 calls, then one every 0.2 ms.
    Clients are told apart by `identity` (the peer address, or the address a trusted proxy
    forwards).

    The bucket is kept as one number per client, the generic cell rate algorithm's theoretical
    arrival time (TAT): a call at `now` is admitted when `TAT - now <= burst`, and moves TAT
    one emission interval on. That is O(1) per call with no timers and no per-call lists
    (`limits`' moving window kept a timestamp list per client and started expiry threads from
    the hot path, ~10 us a call here). Clients whose buckets are full again are forgotten
    when the table grows, so it holds only the recently active.
    """

    __slots__ = ("_burst", "_clock", "_identity", "_interval", "_sweep_at", "_tat", "_text")

    metadata_keys = ClientIdentity.metadata_keys

    def __init__(
        self,
        limit: str,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 65_536,
        identity: ClientIdentity | None = None,
    ) -> None:
        item = limits.parse(limit)
        self._interval = item.get_expiry() / item.amount
        """Seconds one call's token takes to refill."""
        # (A millionth of a call's slack absorbs float rounding of the sums of intervals.)
        self._burst = self._interval * (item.amount - 1 + 1e-6)
        """How far TAT may run ahead of now: a full bucket's worth of calls at once."""
        self._clock = clock
        self._identity = identity if identity is not None else ClientIdentity()
        self._sweep_at = max_clients
        """Table size at which idle clients are swept (doubles while all are active, so a
        sweep stays amortised O(1) per call)."""
        self._tat: dict[str, float] = {}
        self._text = limit

    def check(self, method: str, metadata: Mapping[str, str], peer: str) -> None:
        now = self._clock()
        client = self._identity.of(metadata, peer)
        tat = self._tat.get(client, now)
        if tat < now:
            tat = now
        if tat - now > self._burst:
            raise ResourceExhausted(f"rate limit of {self._text} per client exceeded; retry later")
        if len(self._tat) >= self._sweep_at and client not in self._tat:
            self._forget_idle(now)
        self._tat[client] = tat + self._interval

    def _forget_idle(self, now: float) -> None:
        """Drops clients whose bucket has refilled (forgetting them changes nothing)."""
        self._tat = {client: tat for client, tat in self._tat.items() if tat > now}
        self._sweep_at = max(self._sweep_at, 2 * len(self._tat))

    @property
    def tracked_clients(self) -> int:
        """Clients with a partly used bucket (or not yet forgotten)."""
        return len(self._tat)


def _client_of(peer: str) -> str:
    """`ipv4:10.0.0.5:51234` -> `ipv4:10.0.0.5` (the port changes per connection)."""
    host, _, port = peer.rpartition(":")
    return host if host and port.isdigit() else peer


def _address_of(client: str) -> _Address | None:
    """`ipv4:10.0.0.5` / `ipv6:[::1]` -> the address; None for anything else (unix:...)."""
    family, _, host = client.partition(":")
    if family not in ("ipv4", "ipv6"):
        return None
    return _parse_address(host.strip("[]"))


def _parse_address(text: str) -> _Address | None:
    """An IP address, IPv4-mapped IPv6 ones (a dual-stack listener's) as IPv4; None when
    `text` is none."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _key_of(address: _Address) -> str:
    """The same key `_client_of` gives a direct peer with this address."""
    if isinstance(address, ipaddress.IPv6Address):
        return f"ipv6:[{address}]"
    return f"ipv4:{address}"


@functools.lru_cache(maxsize=65_536)
def _forwarded_key(text: str | None) -> str | None:
    """The key of a forwarded client address; None when absent or malformed."""
    address = None if text is None else _parse_address(text)
    return None if address is None else _key_of(address)


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
