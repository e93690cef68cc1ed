"""Opens every long-lived resource in one place and closes them in reverse order.

Stages get what they need through constructors; nothing is a lazy module-level singleton.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from threadpoolctl import threadpool_limits

from ab.exposures import ExposureRecorder, ExposureSink, SqliteExposureSink
from ab.routing import RoutingPoller, RoutingTable
from ab.store import (
    JsonStateStore,
    PostgresExposureSink,
    PostgresStateStore,
    StateStore,
    open_pool,
)
from feature_service.catalogue import ItemCatalogue
from feature_service.definitions import ItemArrays
from feature_service.embedded import EmbeddedFeatureStore
from feature_service.event_log import SqliteEventLog
from feature_service.event_tail import EventTail
from feature_service.events import Event
from feature_service.history import PurchaseHistories, replay_offset
from feature_service.layered import LayeredFeatureStore
from feature_service.store import FeatureStore
from feature_service.surfaces import DISCOVERY_WEIGHT
from gateway.config import Settings
from gateway.http_endpoint import HealthState, HttpEndpoint
from gateway.model_registry import ModelRegistry
from gateway.prometheus_metrics import Metrics
from gateway.recommender import Recommender
from gateway.stages.candidates import CandidateRetriever, PopularCandidates, RetrievalIndex
from gateway.stages.features import RankingFeatures
from gateway.stages.rank import FallbackRanker, PredictionCache, Ranker, TritonRanker
from gateway.stages.respond import ResponseBuilder
from gateway.tracing import build_tracer_provider
from triton_models.config import EVALUATION_REPORT, ModelSettings

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    """What the servicer needs, opened and ready."""

    catalogue: ItemCatalogue
    store: FeatureStore
    recommender: Recommender
    metrics: Metrics
    health: HealthState
    http: HttpEndpoint | None
    """The /metrics and /health endpoint, when enabled."""
    tracer: trace.Tracer
    histories: PurchaseHistories | None
    """Purchase histories the ranker reads (None without a ranker); RecordEvents appends."""
    experiment_state: StateStore
    """Where experiment decisions live (Postgres, or the JSON state file when embedded)."""
    traces_new_calls: bool = True
    """Whether a call without a caller's trace context may be sampled (tracing enabled, or a
    tracer provider handed in); when not, the interceptor opens no span for it."""


def served_discovery_weight(model: ModelSettings) -> float:
    """MIXED's discovery weight: the configured one, else the one `make models` chose on the
    validation queries for the models it built (`discovery_weight` in `reports/evaluation.json`
    under `artifacts_dir`), else `DISCOVERY_WEIGHT`. The weight belongs to the models: a
    rebuild on other data chooses again, and the gateway follows."""
    if model.reranker.discovery_weight is not None:
        return model.reranker.discovery_weight
    weight, source = DISCOVERY_WEIGHT, "the default"
    report = model.artifacts_dir / "reports" / EVALUATION_REPORT
    if report.is_file():
        chosen = (json.loads(report.read_text()).get("discovery_weight") or {}).get("weight")
        if chosen is not None:
            weight, source = float(chosen), str(report)
    _log.info("MIXED discovery weight %s (%s)", weight, source)
    return weight


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
        ConfigError: a configured model does not match this gateway (see ModelRegistry).
        RetrievalError: the retrieval index does not match the catalogue.
        FeatureStoreError: the redis_postgres backend cannot reach Postgres.
    """
    model = settings.model
    data_dir = model.artifacts_dir / "data"
    catalogue = ItemCatalogue.load(data_dir)
    metrics = metrics if metrics is not None else Metrics()
    health = HealthState()
    async with contextlib.AsyncExitStack() as stack:
        # One BLAS thread: a request's matrix products are small and requests are concurrent
        # already; a second BLAS thread waits for a core that Triton or another request holds
        # (exact search took 1.0 ms instead of 0.17 ms with the other core busy).
        stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
        traces_new_calls = tracer_provider is not None or settings.monitoring.tracing.enabled
        tracer = _open_tracer(settings, tracer_provider, stack)
        http = _open_http_endpoint(settings, metrics, health, stack)
        store, embedded = await _open_feature_store(settings, catalogue, data_dir, metrics, stack)
        experiments = await _open_experiments(settings, stack)
        candidates = _load_candidates(settings, catalogue)
        ranker = await _open_ranker(settings, catalogue, data_dir, stack, metrics)
        if ranker is not None:
            triton = ranker.triton
            metrics.triton_unanswered.set_function(lambda: triton.abandoned_calls)
        recommender = Recommender(
            model=model,
            routing=experiments.routing,
            catalogue=catalogue,
            store=store,
            candidates=candidates,
            fallback=FallbackRanker(catalogue.popularity),
            ranker=ranker,
            responses=ResponseBuilder(catalogue),
            metrics=metrics,
            tracer=tracer,
            exposures=experiments.exposures,
            discovery_weight=served_discovery_weight(model),
        )
        histories = ranker.features.histories if ranker is not None else None
        if embedded is not None:
            await _follow_event_log(settings, embedded, histories, stack)
        yield Resources(
            catalogue,
            store,
            recommender,
            metrics,
            health,
            http,
            tracer,
            histories,
            experiments.state,
            traces_new_calls,
        )


def _open_tracer(
    settings: Settings, provider: TracerProvider | None, stack: contextlib.AsyncExitStack
) -> trace.Tracer:
    """The gateway's tracer, from `provider` or from one built from `monitoring.tracing`
    (which this gateway then shuts down)."""
    if provider is None:
        provider = build_tracer_provider(settings.monitoring)
        stack.callback(provider.shutdown)  # runs last: flushes the final spans
    return provider.get_tracer("gateway")


def _open_http_endpoint(
    settings: Settings, metrics: Metrics, health: HealthState, stack: contextlib.AsyncExitStack
) -> HttpEndpoint | None:
    """The /metrics and /health endpoint, when `monitoring.metrics` enables it."""
    endpoint = settings.monitoring.metrics
    if not endpoint.enabled:
        return None
    http = HttpEndpoint(metrics.registry, health, endpoint.host, endpoint.port)
    stack.callback(http.close)
    return http


@dataclass(frozen=True)
class _EmbeddedStore:
    """The embedded feature store and the event log it was replayed from."""

    store: EmbeddedFeatureStore
    event_log: SqliteEventLog


async def _open_feature_store(
    settings: Settings,
    catalogue: ItemCatalogue,
    data_dir: Path,
    metrics: Metrics,
    stack: contextlib.AsyncExitStack,
) -> tuple[FeatureStore, _EmbeddedStore | None]:
    """The configured feature store; with the embedded backend, also the store and event log
    that `_follow_event_log` keeps current."""
    store_settings = settings.feature_store
    if store_settings.backend == "redis_postgres":
        layered = await LayeredFeatureStore.open(
            store_settings, catalogue, data_dir, metrics.registry
        )
        stack.push_async_callback(layered.close)
        return layered, None
    event_log = await SqliteEventLog.open(store_settings.embedded.event_log_path)
    stack.push_async_callback(event_log.close)
    local_store = await EmbeddedFeatureStore.open(
        catalogue,
        data_dir,
        event_log,
        store_settings.recent_items,
        timedelta(seconds=store_settings.recent_window_s),
        datetime.now(UTC),
    )
    return local_store, _EmbeddedStore(local_store, event_log)


@dataclass(frozen=True)
class _Experiments:
    """The experiment side of the gateway: routing, exposure logging, decisions' store."""

    routing: RoutingTable
    exposures: ExposureRecorder
    state: StateStore


async def _open_experiments(settings: Settings, stack: contextlib.AsyncExitStack) -> _Experiments:
    """The exposure recorder and the routing table, kept current from the experiment state."""
    ab = settings.ab_testing
    store_settings = settings.feature_store
    exposure_sink: ExposureSink
    state: StateStore
    if store_settings.backend == "redis_postgres":
        # Exposures and experiment decisions live in the same Postgres as the event log.
        pool = await open_pool(store_settings.postgres, max_size=4)
        stack.push_async_callback(pool.close)
        exposure_sink = PostgresExposureSink(pool)
        state = PostgresStateStore(pool)
    else:
        sqlite_sink = await SqliteExposureSink.open(ab.exposure_log_path)
        stack.push_async_callback(sqlite_sink.close)
        exposure_sink = sqlite_sink
        state = JsonStateStore(ab.controller.state_file)
    exposures = await stack.enter_async_context(
        ExposureRecorder(exposure_sink, capacity=ab.exposure_queue_size)
    )
    routing = RoutingTable(ab.experiments)
    await stack.enter_async_context(RoutingPoller(routing, state, ab.controller.routing_refresh_s))
    return _Experiments(routing, exposures, state)


def _load_candidates(settings: Settings, catalogue: ItemCatalogue) -> CandidateRetriever:
    """Popular items merged with the retrieval index's, when one has been built."""
    model = settings.model
    retrieval_dir = model.artifacts_dir / "retrieval"
    index = (
        RetrievalIndex.load(
            retrieval_dir,
            catalogue,
            model.candidate_generator.search_k,
            model.candidate_generator.exact_search_max_items,
        )
        if retrieval_dir.is_dir()
        else None
    )
    generator = model.candidate_generator
    return CandidateRetriever(
        PopularCandidates(catalogue),
        index,
        generator.popular_candidates,
        generator.retrieval_cache_size,
    )


async def _follow_event_log(
    settings: Settings,
    embedded: _EmbeddedStore,
    histories: PurchaseHistories | None,
    stack: contextlib.AsyncExitStack,
) -> None:
    """Sibling gateway processes share the event log: what they store reaches this process's
    in-memory features too (feature_service/event_tail.py)."""
    await stack.enter_async_context(
        EventTail(
            embedded.event_log,
            _apply_stored_events(embedded.store, histories),
            after=embedded.store.replayed_through,
            interval_s=settings.feature_store.embedded.tail_interval_s,
        )
    )


def _apply_stored_events(
    store: EmbeddedFeatureStore, histories: PurchaseHistories | None
) -> Callable[[list[Event]], None]:
    """What RecordEvents does in memory once a batch is stored (servicer.RecordEvents), for
    batches another process stored: recent views and purchases, then purchase histories."""

    def apply(events: list[Event]) -> None:
        store.apply_stored(events)
        if histories is not None:
            histories.record(events)

    return apply


async def _open_ranker(
    settings: Settings,
    catalogue: ItemCatalogue,
    data_dir: Path,
    stack: contextlib.AsyncExitStack,
    metrics: Metrics,
) -> Ranker | None:
    """The Triton ranking path, or None while no model repository has been built.

    Raises:
        ConfigError: a configured model is missing from the repository or was trained on other
            features than this gateway builds.
    """
    model = settings.model
    repository = model.repository_dir or model.artifacts_dir / "triton" / "local"
    if not repository.is_dir():
        return None
    names = [model.ranker.default_model] + [
        v.model for e in settings.ab_testing.experiments for v in e.variants if v.model
    ]
    registry = ModelRegistry(repository, names)
    registry.validate_repository()
    offset = timedelta(0)
    if model.replay_data_clock:
        report = json.loads((data_dir / "ingest_report.json").read_text())
        data_end = datetime.fromisoformat(report["split"]["data_end"]).replace(tzinfo=UTC)
        offset = replay_offset(data_end, datetime.now(UTC))
    histories = PurchaseHistories.load(data_dir, catalogue, offset.total_seconds())
    triton = TritonRanker(
        model.ranker.triton_grpc_url,
        model.ranker.failure_threshold,
        model.ranker.recovery_timeout_s,
        max_abandoned_calls=model.ranker.max_abandoned_calls,
        call_deadline_s=model.ranker.call_deadline_s,
        max_calls_in_flight=model.ranker.max_calls_in_flight,
        max_batch_rows=model.ranker.max_batch_rows,
        observe_call_requests=metrics.triton_call_requests.observe,
        http_url=model.ranker.inference_http_url(),
    )
    stack.push_async_callback(triton.close)
    poller = asyncio.create_task(
        registry.poll(triton, model.ranker.model_poll_interval_s), name="model-poller"
    )

    async def stop_poller() -> None:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller

    stack.push_async_callback(stop_poller)
    return Ranker(
        triton=triton,
        registry=registry,
        features=RankingFeatures(histories, ItemArrays.from_catalogue(catalogue)),
        cache=PredictionCache(
            model.ranker.prediction_cache_size, model.ranker.prediction_cache_ttl_s
        ),
    )
