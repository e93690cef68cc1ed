"""Stage 8: turn the final ranking into the API response."""

from __future__ import annotations

from recsys.v1 import recommendation_pb2 as pb

from ab.assignment import Assignment
from feature_service.catalogue import CURRENCY, ItemCatalogue
from gateway.stages.types import Candidates


def build_response(
    items: Candidates,
    catalogue: ItemCatalogue,
    request_id: str,
    model_version: str,
    assignment: Assignment | None,
    degraded_reasons: tuple[str, ...],
    latency_ms: float,
) -> pb.RecommendResponse:
    """The RecommendResponse for `items` (already in final order)."""
    names = catalogue.category_names
    recommendations = [
        pb.Recommendation(
            item_id=catalogue.item_ids[p],
            score=float(s),
            metadata=pb.ItemMetadata(
                title=catalogue.titles[p],
                price=float(catalogue.price[p]),
                currency=CURRENCY,
                category=names[catalogue.category[p]],
                category_path=(names[catalogue.category[p]], catalogue.subcategory[p]),
            ),
        )
        for p, s in zip(items.positions.tolist(), items.scores.tolist(), strict=True)
    ]
    reasons = sorted({pb.DegradedReason.Value(f"DEGRADED_REASON_{r}") for r in degraded_reasons})
    return pb.RecommendResponse(
        recommendations=recommendations,
        model_version=model_version,
        latency_ms=latency_ms,
        experiment_id=assignment.experiment_id if assignment else "",
        request_id=request_id,
        degraded=bool(reasons),
        degraded_reasons=reasons,
    )
