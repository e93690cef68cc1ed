"""The Recommend pipeline: stages in order, each given only what it needs.

Reads like a table of contents: validated query in, response out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from opentelemetry import trace
from recsys.v1 import recommendation_pb2 as pb

from ab.config import ABTestingSettings
from ab.exposures import Exposure, ExposureRecorder
from feature_service.catalogue import ItemCatalogue
from feature_service.store import FeatureStore
from gateway.deadline import Budget
from gateway.metrics import Metrics
from gateway.stages.assign import assign_variant
from gateway.stages.candidates import PopularCandidates, candidate_count
from gateway.stages.features import fetch_user_features
from gateway.stages.filter import filter_candidates
from gateway.stages.rank import PopularityRanker
from gateway.stages.rerank import cap_per_category, diversify, truncate
from gateway.stages.respond import build_response
from gateway.stages.types import RecommendQuery
from triton_models.config import ModelSettings

# Share of the request budget the feature stage may use before it falls back to defaults.
FEATURES_BUDGET_SHARE = 0.3


@dataclass(frozen=True)
class Recommender:
    """Runs one Recommend request through every stage."""

    model: ModelSettings
    ab_testing: ABTestingSettings
    catalogue: ItemCatalogue
    store: FeatureStore
    candidates: PopularCandidates
    ranker: PopularityRanker
    metrics: Metrics
    tracer: trace.Tracer
    exposures: ExposureRecorder

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        """One span and one latency observation per stage; exceptions are recorded on the span
        and re-raised."""
        with self.tracer.start_as_current_span(name), self.metrics.stage(name):
            yield

    async def recommend(self, query: RecommendQuery, budget: Budget) -> pb.RecommendResponse:
        """The response for a validated query; raises DeadlineExceeded when the budget runs out."""
        started = time.perf_counter()
        stage = self._stage
        request_span = trace.get_current_span()
        reasons: list[str] = []
        with stage("assign"):
            assignment = assign_variant(query.user_id, self.ab_testing.experiments)

        budget.check("features")
        with stage("features"):
            user, complete = await fetch_user_features(
                self.store,
                query.user_id,
                query.context.time,
                budget.remaining() * FEATURES_BUDGET_SHARE,
            )
        if not complete:
            reasons.append("FEATURES_UNAVAILABLE")
        if assignment is not None:
            request_span.set_attribute("recsys.experiment_id", assignment.experiment_id)

        budget.check("candidates")
        rules = self.model.reranker
        with stage("candidates"):
            blocked = [self.catalogue.positions(query.exclude_item_ids)]
            if rules.filter_recently_viewed:
                blocked.append(user.recent_viewed)
            if rules.filter_recently_purchased:
                blocked.append(user.recent_purchased)
            blocked_positions = np.unique(np.concatenate(blocked))
            count = candidate_count(
                self.model.candidate_generator.candidates, query.num_items, len(blocked_positions)
            )
            candidates = self.candidates.retrieve(count)

        with stage("filter"):
            kept = filter_candidates(
                candidates,
                blocked_positions,
                self.catalogue.available if rules.filter_out_of_stock else None,
            )
        self.metrics.candidates.labels("retrieved").observe(len(candidates))
        self.metrics.candidates.labels("filtered").observe(len(kept))
        request_span.set_attribute("recsys.candidates.retrieved", len(candidates))
        request_span.set_attribute("recsys.candidates.filtered", len(kept))

        budget.check("rank")
        with stage("rank"):
            ranking = self.ranker.rank(kept)
        reasons.extend(ranking.degraded_reasons)
        request_span.set_attribute("recsys.model_version", ranking.model_version)

        with stage("rerank"):
            # Diversity picks a few more than needed so the category cap can still fill the list.
            pool = query.num_items * 3 if rules.max_per_category else query.num_items
            diverse = diversify(
                ranking.items, self.catalogue.category, rules.diversity_weight, pool
            )
            items = truncate(
                cap_per_category(diverse, self.catalogue.category, rules.max_per_category),
                query.num_items,
            )
        if len(items) < query.num_items:
            reasons.append("SHORT_RESPONSE")
        for reason in reasons:
            self.metrics.degraded.labels(reason).inc()
        if reasons:
            request_span.set_attribute("recsys.degraded_reasons", reasons)
        if assignment is not None:
            self.metrics.exposures.labels(assignment.experiment, assignment.variant).inc()
        with stage("respond"):
            response = build_response(
                items,
                self.catalogue,
                query.request_id,
                ranking.model_version,
                assignment,
                tuple(reasons),
                (time.perf_counter() - started) * 1000.0,
            )
        if assignment is not None:
            exposure = Exposure(
                request_id=query.request_id,
                user_id=query.user_id,
                experiment=assignment.experiment,
                variant=assignment.variant,
                model_version=ranking.model_version,
                item_ids=tuple(r.item_id for r in response.recommendations),
                timestamp=query.context.time,
            )
            if not self.exposures.record(exposure):
                self.metrics.exposures_dropped.inc()
        return response
