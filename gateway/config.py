"""The one typed configuration object, loaded once in `main()` from YAML plus environment overrides.

Each package owns the model of its own section (`model` in triton_models, `feature_store` in
feature_service, `ab_testing` in ab); this module adds the gateway's own sections and composes
them. Environment variables named `RECSYS__<SECTION>__<KEY>[__<KEY>...]` override the file;
values are converted to the field's type by validation (`RECSYS__SERVING__PORT=50052`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import limits
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import NoDecode

from ab.config import ABTestingSettings
from feature_service.config import FeatureStoreSettings
from feature_service.config_file import ConfigFileError, FileSettings, describe, load
from triton_models.config import ModelSettings

_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


MAX_PROCESSES = 64
"""Most gateway processes on one machine (each holds its own copy of the catalogue and
features)."""


class ConfigError(Exception):
    """The configuration is invalid; the message names every bad key."""


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (`taskset`, cpusets), capped by a
    cgroup v2 CPU quota (a container's `--cpus`), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS)
        cores = os.cpu_count() or 1
    try:
        quota, period = _CPU_MAX.read_text(encoding="ascii").split()
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup v2 quota here
        pass
    return max(cores, 1)


class AuthSettings(BaseModel):
    """Token authentication of RecordEvents and administrative RPCs."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    token: SecretStr | None = None
    """Bearer token clients send as `authorization: Bearer <token>`; set it through
    RECSYS__SERVING__AUTH__TOKEN."""
    token_file: Path | None = None
    """File holding the token (e.g. a mounted Kubernetes Secret); read once at start-up."""
    required: bool = False
    """Refuse to start without a token (production). When False and no token is set, no
    token is asked for (the local profile, bound to 127.0.0.1)."""


class TlsSettings(BaseModel):
    """TLS on the gRPC port; mutual TLS when a client CA is given."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    cert_file: Path | None = None
    """PEM server certificate (chain); TLS is on when this and `key_file` are set."""
    key_file: Path | None = None
    """PEM private key of the server certificate."""
    client_ca_file: Path | None = None
    """PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."""

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file needs cert_file and key_file (mutual TLS)")
        return self


class AdmissionSettings(BaseModel):
    """`serving.admission`: how many Recommend pipelines run at once per process, and how
    long a request may wait for one (see gateway/admission.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_running: int = Field(16, ge=1)
    """Recommend pipelines running at once. One event loop interleaves them, so a few more than
    keep the CPU and Triton busy only add latency to all of them."""
    max_queued: int = Field(64, ge=0)
    """Requests that may wait for a free pipeline; more are refused with RESOURCE_EXHAUSTED at
    once."""
    max_queue_wait_ms: float = Field(25.0, ge=0)
    """Longest wait for a free pipeline before RESOURCE_EXHAUSTED (never past the request's
    deadline); keep it well under `default_deadline_ms` so an admitted request still has time
    to finish."""


class ServingSettings(BaseModel):
    """The `serving` section: the gRPC server and its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Address the gRPC server binds to."""
    port: int = Field(50051, ge=0, le=65535)
    """gRPC port; 0 picks a free one (tests). In `make stack`, nginx's port."""
    processes: int = Field(
        default_factory=lambda: min(available_cores(), MAX_PROCESSES), ge=1, le=MAX_PROCESSES
    )
    """Gateway processes the runner starts (default: one per core this machine gives us).
    `make run` binds them all to `port` (`reuse_port`); `make stack` runs them behind nginx on
    the ports after `port`. With several, their metrics are on the ports after
    `monitoring.metrics.port`."""
    reuse_port: bool = False
    """Bind `port` with SO_REUSEPORT, so that several gateway processes share it and the kernel
    spreads connections over them. The runner turns it on for `make run` with several
    processes; off, a port another process holds stops start-up ("cannot bind")."""
    default_deadline_ms: float = Field(100.0, gt=0)
    """Time budget of a request whose client sent no deadline; a client deadline may shorten it."""
    grace_period_s: float = Field(10.0, ge=0)
    """On SIGTERM, in-flight requests get this long to finish."""
    max_concurrent_rpcs: int = Field(256, ge=1)
    """Requests in flight per process (every method, waiting ones included); more are rejected
    with RESOURCE_EXHAUSTED by gRPC itself."""
    max_concurrent_streams: int = Field(100, ge=1)
    """Calls one client connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    A client waits for a free stream or has the call refused by gRPC itself with UNAVAILABLE
    (REFUSED_STREAM: never processed, safe to retry), at no cost to the server; without the
    bound, an overload piles calls up inside gRPC, ahead of any Python code, until every one of
    them has expired."""
    admission: AdmissionSettings = AdmissionSettings()
    """Bound on Recommend pipelines running at once, and the queue in front of it."""
    events_admission: AdmissionSettings = AdmissionSettings(
        max_running=8, max_queued=64, max_queue_wait_ms=50.0
    )
    """Bound on RecordEvents calls running at once (each holds a store write), and the queue in
    front of it; separate from `admission`, so event batches never take Recommend's slots."""
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Transport limit of one message; larger ones are refused by gRPC itself."""
    max_recommend_request_bytes: int = Field(64 * 1024, ge=256)
    """Largest accepted Recommend request."""
    max_events_request_bytes: int = Field(1024 * 1024, ge=1024)
    """Largest accepted RecordEvents request."""
    max_exclude_items: int = Field(500, ge=0)
    """Most `exclude_item_ids` in one Recommend request."""
    max_events_per_batch: int = Field(1000, ge=1)
    """Most events in one RecordEvents request."""
    max_event_future_skew_s: float = Field(300.0, ge=0)
    """How far in the future an event timestamp may lie (client clock skew)."""
    auth: AuthSettings = AuthSettings()
    """Authentication settings."""
    tls: TlsSettings = TlsSettings()
    """TLS settings; plaintext when no certificate is configured."""
    rate_limit: str | None = "5000/second"
    """Per-client request limit in `limits` notation (`100/second`, `10000/minute`); clients
    are told apart by peer address, or by the address a `trusted_proxies` peer forwards. Each
    process counts its own connections. None or empty disables it."""
    trusted_proxies: Annotated[tuple[IPvAnyNetwork, ...], NoDecode] = ()
    """Proxies (addresses or CIDR networks: nginx, the ingress controller's pods) whose
    X-Forwarded-For / X-Real-IP name the real client for the rate limit; from any other peer
    those headers are ignored. Empty: the peer address is the client."""

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        # RECSYS__SERVING__TRUSTED_PROXIES="10.0.0.0/8,127.0.0.1" or a JSON list.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("rate_limit")
    @classmethod
    def _valid_rate_limit(cls, value: str | None) -> str | None:
        if value == "":  # RECSYS__SERVING__RATE_LIMIT= switches it off
            return None
        if value is not None:
            try:
                limits.parse(value)
            except ValueError as exc:
                raise ValueError(f"not a rate limit such as '100/second': {exc}") from exc
        return value


class MetricsSettings(BaseModel):
    """Prometheus metrics and the HTTP health endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    enabled: bool = True
    """Serve `/metrics` and `/health` over HTTP."""
    host: str = "127.0.0.1"
    """Address of the metrics HTTP server."""
    port: int = Field(9464, ge=0, le=65535)
    """Port of the metrics HTTP server; 0 picks a free one."""


class TracingSettings(BaseModel):
    """OpenTelemetry tracing."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    enabled: bool = False
    """Export spans over OTLP."""
    otlp_endpoint: str = "http://127.0.0.1:4317"
    """OTLP gRPC collector endpoint."""
    sample_ratio: float = Field(0.01, ge=0.0, le=1.0)
    """Share of requests traced (parent-based)."""


class MonitoringSettings(BaseModel):
    """The `monitoring` section."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    """Minimum level of the JSON log lines."""
    request_log_sample_ratio: float = Field(0.01, ge=0.0, le=1.0)
    """Share of successful requests logged (one JSON line each); every error is logged."""
    metrics: MetricsSettings = MetricsSettings()
    """Metrics settings."""
    tracing: TracingSettings = TracingSettings()
    """Tracing settings."""


class Settings(FileSettings):
    """Everything the service needs, nested by concern. Built once, then passed down."""

    model: ModelSettings = ModelSettings()
    """Models, retrieval, ranking and re-ranking."""
    feature_store: FeatureStoreSettings = FeatureStoreSettings()
    """Feature store and event log."""
    serving: ServingSettings = Field(default_factory=ServingSettings)
    """The gRPC server (built at load time: its process count follows the machine)."""
    ab_testing: ABTestingSettings = ABTestingSettings()
    """Experiments."""
    monitoring: MonitoringSettings = MonitoringSettings()
    """Metrics, traces and logs."""


def load_settings(path: Path | None, environ: Mapping[str, str]) -> Settings:
    """Reads the YAML file (when given), applies `RECSYS__...` overrides and validates.

    Relative paths inside the file are resolved against the current working directory.

    Raises:
        ConfigError: the file is missing or unreadable, or a key is unknown or invalid.
    """
    try:
        return load(Settings, path, environ)
    except ConfigFileError as exc:
        raise ConfigError(str(exc)) from exc
    except ValidationError as exc:
        raise ConfigError(describe(exc, path)) from exc
