"""`recsys.v1.RecommendationService`: proto in, validated stage input, pipeline, proto out."""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from datetime import UTC, datetime

import grpc
from recsys.v1 import recommendation_pb2 as pb
from recsys.v1 import recommendation_pb2_grpc as pb_grpc

from feature_service.history import PurchaseHistories
from feature_service.store import FeatureStore, FeatureStoreError
from gateway.admission import AdmissionControl
from gateway.deadline import Budget
from gateway.errors import Unavailable
from gateway.prometheus_metrics import Metrics
from gateway.recommender import Recommender
from gateway.stages.validate import Limits, validate_events, validate_recommend

_log = logging.getLogger(__name__)


def hash_user(user_id: str) -> str:
    """A stable pseudonym for logs: user ids never appear in them."""
    return hashlib.blake2b(user_id.encode(), digest_size=8).hexdigest()


class RecommendationServicer(pb_grpc.RecommendationServiceServicer):
    """Handles the public RPCs; errors are mapped to status codes by the interceptor."""

    def __init__(
        self,
        recommender: Recommender,
        store: FeatureStore,
        limits: Limits,
        default_deadline_s: float,
        metrics: Metrics,
        histories: PurchaseHistories | None,
        admission: AdmissionControl,
        events_admission: AdmissionControl,
        log_sample_ratio: float = 0.0,
    ) -> None:
        self._recommender = recommender
        self._store = store
        self._limits = limits
        self._default_deadline_s = default_deadline_s
        self._metrics = metrics
        self._histories = histories
        self._admission = admission
        self._events_admission = events_admission
        self._log_sample_ratio = log_sample_ratio

    async def Recommend(
        self,
        request: pb.RecommendRequest,
        context: grpc.aio.ServicerContext[pb.RecommendRequest, pb.RecommendResponse],
    ) -> pb.RecommendResponse:
        budget = Budget.for_request(context.time_remaining(), self._default_deadline_s)
        query = validate_recommend(request, self._limits, datetime.now(UTC))
        # Validation comes first: bad input gets INVALID_ARGUMENT even when the server is full.
        async with self._admission.admit(budget):
            response = await self._recommender.recommend(query, budget)
        if random.random() < self._log_sample_ratio:
            _log.info(
                "recommend",
                extra={
                    "request_id": response.request_id,
                    "user": hash_user(query.user_id),
                    "experiment_id": response.experiment_id,
                    "model_version": response.model_version,
                    "latency_ms": round(response.latency_ms, 3),
                    "items": len(response.recommendations),
                    "degraded": [pb.DegradedReason.Name(r) for r in response.degraded_reasons],
                },
            )
        return response

    async def RecordEvents(
        self,
        request: pb.RecordEventsRequest,
        context: grpc.aio.ServicerContext[pb.RecordEventsRequest, pb.RecordEventsResponse],
    ) -> pb.RecordEventsResponse:
        budget = Budget.for_request(context.time_remaining(), self._default_deadline_s)
        events = validate_events(request, self._limits, datetime.now(UTC))
        # Refused before anything is written: the whole batch can be retried.
        async with self._events_admission.admit(budget):
            try:
                result = await self._store.record_events(events)
            except FeatureStoreError as exc:
                raise Unavailable("events could not be stored; retry the batch") from exc
        if self._histories is not None:
            # Purchases feed the ranker's user features from the next request on.
            self._histories.record(events)
        counter = self._metrics.events
        for kind, count in Counter(e.type.name.lower() for e in events).items():
            counter.labels(kind, "received").inc(count)
        counter.labels("all", "accepted").inc(result.accepted)
        counter.labels("all", "duplicate").inc(result.duplicates)
        return pb.RecordEventsResponse(accepted=result.accepted, duplicates=result.duplicates)
