"""The Recommend pipeline: stages in order, each given only what it needs.

Reads like a table of contents: validated query in, response out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from opentelemetry import trace
from recsys.v1 import recommendation_pb2 as pb

from ab.exposures import Exposure, ExposureRecorder
from ab.routing import RoutingTable, UserArms
from feature_service.catalogue import ItemCatalogue
from feature_service.history import NO_PURCHASES, UserPurchases
from feature_service.kernels import contained
from feature_service.store import FeatureStore, UserFeatures
from feature_service.surfaces import Surface
from gateway.deadline import Budget
from gateway.errors import ServiceError
from gateway.prometheus_metrics import Metrics
from gateway.stages.assign import assign_variant
from gateway.stages.blend import surface_list
from gateway.stages.candidates import HISTORY_CANDIDATES, CandidateRetriever, candidate_count
from gateway.stages.features import fetch_user_features
from gateway.stages.filter import filter_candidates
from gateway.stages.rank import FallbackRanker, Ranker, RankRequest, rank_candidates
from gateway.stages.rerank import rerank
from gateway.stages.respond import ResponseBuilder
from gateway.stages.types import Candidates, RecommendQuery
from gateway.tracing import PipelineStage
from triton_models.config import ModelSettings

# Share of the request budget the feature stage may use before it falls back to defaults.
FEATURES_BUDGET_SHARE = 0.3


@dataclass(frozen=True)
class Recommender:
    """Runs one Recommend request through every stage."""

    model: ModelSettings
    routing: RoutingTable
    catalogue: ItemCatalogue
    store: FeatureStore
    candidates: CandidateRetriever
    fallback: FallbackRanker
    ranker: Ranker | None
    responses: ResponseBuilder
    metrics: Metrics
    tracer: trace.Tracer
    exposures: ExposureRecorder
    discovery_weight: float
    """MIXED's price of a new product (`feature_service.surfaces.discovery_slots_for`), settled
    at start-up (`gateway.resources.served_discovery_weight`)."""

    def _stage(self, name: str) -> PipelineStage:
        """Times a stage (and spans it when the request is sampled); exceptions are recorded
        on the span and re-raised."""
        return PipelineStage(self.metrics.stage_observer(name), self.tracer, name)

    async def recommend(self, query: RecommendQuery, budget: Budget) -> pb.RecommendResponse:
        """The response for a validated query; raises DeadlineExceeded when the budget runs out."""
        started = time.perf_counter()
        with self._stage("assign"):
            routed = assign_variant(query.user_id, self.routing)
        if routed is None:
            return await self._recommend(query, budget, None, started)
        arms = [(a.assignment.experiment, a.assignment.variant) for a in routed.arms]
        code = "OK"
        try:
            return await self._recommend(query, budget, routed, started)
        except ServiceError as exc:
            code = exc.code.name
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            metrics = self.metrics
            for arm in arms:
                metrics.child(metrics.arm_requests, *arm, code).inc()
                metrics.child(metrics.arm_duration, *arm).observe(time.perf_counter() - started)

    async def _recommend(
        self,
        query: RecommendQuery,
        budget: Budget,
        routed: UserArms | None,
        started: float,
    ) -> pb.RecommendResponse:
        stage = self._stage
        request_span = trace.get_current_span()
        reasons: list[str] = ["CLIENT_CLOCK_SKEW"] if query.context.client_clock_skewed else []
        assignment = routed.primary if routed is not None else None
        if assignment is not None:
            request_span.set_attribute("recsys.experiment_id", assignment.experiment_id)

        budget.check("features")
        with stage("features"):
            user, complete = await fetch_user_features(
                self.store,
                query.user_id,
                query.context.time,
                budget.remaining() * FEATURES_BUDGET_SHARE,
            )
            # Kept per user and replaced when their purchases are recorded, not rebuilt here.
            purchases = (
                self.ranker.features.histories.purchases(query.user_id)
                if self.ranker is not None
                else NO_PURCHASES
            )
            history = purchases.history
        if not complete:
            reasons.append("FEATURES_UNAVAILABLE")

        budget.check("candidates")
        rules = self.model.reranker
        kept = self._candidates(query, user, purchases, request_span)

        # The control arm of an experiment on the default list (MIXED) serves the ranker's
        # list, today's default; a list asked for by name (DISCOVER, BUY_AGAIN) is served.
        surface = query.surface
        if surface is Surface.MIXED and routed is not None and not routed.serve_surface:
            surface = Surface.BUY_AGAIN
        owned = purchases.recent_items
        budget.check("rank")
        with stage("rank"):
            ranking = await rank_candidates(
                RankRequest(
                    query.user_id,
                    query.context,
                    history,
                    kept,
                    owned,
                    assignment,
                    surface is not Surface.BUY_AGAIN,
                ),
                budget,
                self.ranker,
                self.fallback,
                self.model.ranker,
                self.metrics,
            )
        reasons.extend(ranking.degraded_reasons)
        request_span.set_attribute("recsys.model_version", ranking.model_version)

        with stage("rerank"):
            embeddings = (
                self.candidates.index.unit_item_vectors
                if self.candidates.index is not None
                else None
            )
            items = surface_list(
                surface,
                ranking,
                owned,
                query.num_items,
                rules.discovery_slots,
                lambda ranked: rerank(
                    ranked, self.catalogue.category, rules, query.num_items, embeddings
                ),
                self.discovery_weight,
            )
        if len(items) < query.num_items:
            reasons.append("SHORT_RESPONSE")
        is_new = ~contained(items.positions, owned)
        self._count_served(surface, is_new, reasons, routed, request_span)
        with stage("respond"):
            response = self.responses.build(
                items,
                query.request_id,
                ranking.model_version,
                assignment,
                tuple(reasons),
                (time.perf_counter() - started) * 1000.0,
            )
        if routed is not None:
            self._log_exposure(query, routed, ranking.model_version, response, is_new)
        return response

    def _candidates(
        self,
        query: RecommendQuery,
        user: UserFeatures,
        purchases: UserPurchases,
        request_span: trace.Span,
    ) -> Candidates:
        """The candidates and filter stages: retrieved items less the blocked and unavailable."""
        rules = self.model.reranker
        with self._stage("candidates"):
            blocked = [self.catalogue.positions(query.exclude_item_ids)]
            if rules.filter_recently_viewed:
                blocked.append(user.recent_viewed)
            if rules.filter_recently_purchased:
                blocked.append(user.recent_purchased)
            blocked_positions = np.unique(np.concatenate(blocked))
            count = candidate_count(
                self.model.candidate_generator.candidates, query.num_items, len(blocked_positions)
            )
            past_items = purchases.recent_items[:HISTORY_CANDIDATES]
            candidates, cached = self.candidates.retrieve_cached(query.user_id, past_items, count)
        metrics = self.metrics
        (metrics.retrieval_cache_hits if cached else metrics.retrieval_cache_misses).inc()

        with self._stage("filter"):
            kept = filter_candidates(
                candidates,
                blocked_positions,
                self.catalogue.available if rules.filter_out_of_stock else None,
            )
        metrics.candidates_retrieved.observe(len(candidates))
        metrics.candidates_filtered.observe(len(kept))
        request_span.set_attribute("recsys.candidates.retrieved", len(candidates))
        request_span.set_attribute("recsys.candidates.filtered", len(kept))
        return kept

    def _count_served(
        self,
        surface: Surface,
        is_new: npt.NDArray[np.bool_],
        reasons: list[str],
        routed: UserArms | None,
        request_span: trace.Span,
    ) -> None:
        """Metrics of an answer: own and new items served, degraded reasons, exposures."""
        metrics = self.metrics
        new_items = int(np.count_nonzero(is_new))
        served = surface.name.lower()
        metrics.child(metrics.recommended_items, served, "new").inc(new_items)
        metrics.child(metrics.recommended_items, served, "own").inc(len(is_new) - new_items)
        for reason in reasons:
            metrics.child(metrics.degraded, reason).inc()
        if reasons:
            request_span.set_attribute("recsys.degraded_reasons", reasons)
        if routed is not None:
            for arm in routed.arms:
                exposed = arm.assignment
                metrics.child(metrics.exposures, exposed.experiment, exposed.variant).inc()

    def _log_exposure(
        self,
        query: RecommendQuery,
        routed: UserArms,
        model_version: str,
        response: pb.RecommendResponse,
        is_new: npt.NDArray[np.bool_],
    ) -> None:
        """One exposure per experiment the user is in (one per layer), each with the items
        that were new to the user (the discovery metrics of `ab.variant_sums`)."""
        item_ids = tuple(r.item_id for r in response.recommendations)
        new_item_ids = tuple(i for i, new in zip(item_ids, is_new.tolist(), strict=True) if new)
        for arm in routed.arms:
            exposure = Exposure(
                request_id=query.request_id,
                user_id=query.user_id,
                experiment=arm.assignment.experiment,
                variant=arm.assignment.variant,
                model_version=model_version,
                item_ids=item_ids,
                timestamp=query.context.time,
                assignment_probability=arm.probability,
                new_item_ids=new_item_ids,
            )
            if not self.exposures.record(exposure):
                self.metrics.exposures_dropped.inc()
