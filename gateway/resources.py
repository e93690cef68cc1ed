"""Opens every long-lived resource in one place and closes them in reverse order.

Stages get what they need through constructors; nothing is a lazy module-level singleton.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from ab.exposures import ExposureRecorder, SqliteExposureSink
from feature_service.catalogue import ItemCatalogue
from feature_service.embedded import EmbeddedFeatureStore
from feature_service.event_log import SqliteEventLog
from gateway.config import ConfigError, Settings
from gateway.http_endpoint import HealthState, HttpEndpoint
from gateway.metrics import Metrics
from gateway.recommender import Recommender
from gateway.stages.candidates import PopularCandidates
from gateway.stages.rank import PopularityRanker
from gateway.telemetry import build_tracer_provider


@dataclass(frozen=True)
class Resources:
    """What the servicer needs, opened and ready."""

    catalogue: ItemCatalogue
    store: EmbeddedFeatureStore
    recommender: Recommender
    metrics: Metrics
    health: HealthState
    http: HttpEndpoint | None
    """The /metrics and /health endpoint, when enabled."""
    tracer: trace.Tracer


@contextlib.asynccontextmanager
async def open_resources(
    settings: Settings,
    metrics: Metrics | None = None,
    tracer_provider: TracerProvider | None = None,
) -> AsyncIterator[Resources]:
    """Loads the catalogue, opens the feature store, event log and HTTP endpoint; closes them
    in reverse order on exit, then flushes telemetry. `metrics` defaults to a fresh registry,
    `tracer_provider` to one built from `monitoring.tracing`.

    Raises:
        CatalogueError: the offline artefacts are missing (run `make models`).
        ConfigError: the configured feature-store backend is not available in this build.
    """
    data_dir = settings.model.artifacts_dir / "data"
    store_settings = settings.feature_store
    if store_settings.backend != "embedded":
        raise ConfigError(
            f"feature_store.backend: {store_settings.backend!r} is not available in this "
            "build; use 'embedded'"
        )
    catalogue = ItemCatalogue.load(data_dir)
    metrics = metrics if metrics is not None else Metrics()
    health = HealthState()
    async with contextlib.AsyncExitStack() as stack:
        if tracer_provider is None:
            tracer_provider = build_tracer_provider(settings.monitoring)
            stack.callback(tracer_provider.shutdown)  # runs last: flushes the final spans
        tracer = tracer_provider.get_tracer("gateway")
        http = None
        if settings.monitoring.metrics.enabled:
            endpoint = settings.monitoring.metrics
            http = HttpEndpoint(metrics.registry, health, endpoint.host, endpoint.port)
            stack.callback(http.close)
        event_log = await SqliteEventLog.open(store_settings.embedded.event_log_path)
        stack.push_async_callback(event_log.close)
        store = await EmbeddedFeatureStore.open(
            catalogue,
            data_dir,
            event_log,
            store_settings.recent_items,
            timedelta(seconds=store_settings.recent_window_s),
            datetime.now(UTC),
        )
        exposure_sink = await SqliteExposureSink.open(settings.ab_testing.exposure_log_path)
        stack.push_async_callback(exposure_sink.close)
        exposures = await stack.enter_async_context(
            ExposureRecorder(exposure_sink, capacity=settings.ab_testing.exposure_queue_size)
        )
        recommender = Recommender(
            model=settings.model,
            ab_testing=settings.ab_testing,
            catalogue=catalogue,
            store=store,
            candidates=PopularCandidates(catalogue),
            ranker=PopularityRanker(),
            metrics=metrics,
            tracer=tracer,
            exposures=exposures,
        )
        yield Resources(catalogue, store, recommender, metrics, health, http, tracer)
