"""Stage 8: turn the final ranking into the API response."""

from __future__ import annotations

from cachetools import LRUCache
from recsys.v1 import recommendation_pb2 as pb

from ab.assignment import Assignment
from feature_service.catalogue import CURRENCY, ItemCatalogue
from gateway.stages.types import Candidates


class ResponseBuilder:
    """Builds RecommendResponses for one catalogue.

    Each item's Recommendation (id and metadata) is built once and copied into later responses
    with only the score set: constructing ten nested messages from Python strings took 87 us
    per response, copying them 14 us. Templates are kept for the `cache_size` most recently
    recommended items, so a large catalogue does not hold one per item.
    """

    def __init__(self, catalogue: ItemCatalogue, cache_size: int = 50_000) -> None:
        self._catalogue = catalogue
        self._templates: LRUCache[int, pb.Recommendation] = LRUCache(maxsize=cache_size)

    def _template(self, position: int) -> pb.Recommendation:
        template = self._templates.get(position)
        if template is None:
            catalogue = self._catalogue
            category = catalogue.category_names[catalogue.category[position]]
            template = pb.Recommendation(
                item_id=catalogue.item_ids[position],
                metadata=pb.ItemMetadata(
                    title=catalogue.titles[position],
                    price=float(catalogue.price[position]),
                    currency=CURRENCY,
                    category=category,
                    category_path=(category, catalogue.subcategory[position]),
                ),
            )
            self._templates[position] = template
        return template

    def build(
        self,
        items: Candidates,
        request_id: str,
        model_version: str,
        assignment: Assignment | None,
        degraded_reasons: tuple[str, ...],
        latency_ms: float,
    ) -> pb.RecommendResponse:
        """The RecommendResponse for `items` (already in final order)."""
        reasons = sorted(
            {pb.DegradedReason.Value(f"DEGRADED_REASON_{r}") for r in degraded_reasons}
        )
        response = pb.RecommendResponse(
            model_version=model_version,
            latency_ms=latency_ms,
            experiment_id=assignment.experiment_id if assignment else "",
            request_id=request_id,
            degraded=bool(reasons),
            degraded_reasons=reasons,
        )
        recommendations = response.recommendations
        for position, score in zip(items.positions.tolist(), items.scores.tolist(), strict=True):
            recommendation = recommendations.add()
            recommendation.CopyFrom(self._template(position))
            recommendation.score = score
        return response
