"""Every Prometheus metric of the layered feature store, declared in one place.

Labels come from fixed sets: `level` (l1 process cache, l2 Redis, l3 Postgres), `entity`
(user: the store serves only users; the label stays so that recording rules and dashboards keep
their shape) and `result` (hit, miss). The registry is injectable; the gateway passes its own
so the store's metrics are served with the rest.
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

Level = Literal["l1", "l2", "l3"]
Entity = Literal["user"]
LEVELS: tuple[Level, ...] = ("l1", "l2", "l3")
ENTITIES: tuple[Entity, ...] = ("user",)

# Seconds: an L1 hit takes microseconds, Redis sub-millisecond to a few ms, Postgres more.
LOOKUP_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class FeatureStoreMetrics:
    """The store's metrics, registered in `registry`; label children are bound once here."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "recsys_feature_cache_requests",
            "Feature lookups by cache level, entity and result (one per user).",
            ["level", "entity", "result"],
            registry=self.registry,
        )
        self.lookup_duration = Histogram(
            "recsys_feature_lookup_duration_seconds",
            "Time of one feature lookup at each level.",
            ["level"],
            buckets=LOOKUP_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "recsys_feature_store_errors",
            "Failed calls to a store level (reads then degrade to the next level).",
            ["level"],
            registry=self.registry,
        )
        self.spooled = Counter(
            "recsys_events_spooled",
            "Events acknowledged from the local spool because Postgres was down.",
            registry=self.registry,
        )
        self.spool_pending = Gauge(
            "recsys_event_spool_pending_events",
            "Events acknowledged from the local spool and not yet stored in Postgres (lost if "
            "the spool's volume is deleted before they are replayed).",
            registry=self.registry,
        )
        # Bound children: the L1 hit path must not pay for label lookups.
        self.hit = {
            (level, entity): self.requests.labels(level, entity, "hit")
            for level in LEVELS
            for entity in ENTITIES
        }
        self.miss = {
            (level, entity): self.requests.labels(level, entity, "miss")
            for level in LEVELS
            for entity in ENTITIES
        }
        self.duration = {level: self.lookup_duration.labels(level) for level in LEVELS}
        self.error = {level: self.errors.labels(level) for level in LEVELS}

    def count(self, level: Level, entity: Entity, hits: int, misses: int) -> None:
        """Adds `hits` and `misses` lookups of `entity` at `level`."""
        if hits:
            self.hit[level, entity].inc(hits)
        if misses:
            self.miss[level, entity].inc(misses)
