"""Stage 4: retrieve candidate items for the user.

Until the offline pipeline's Annoy index is deployed, candidates are the most popular items of
the catalogue (the same list new users will always get merged in for cold start).
"""

from __future__ import annotations

import numpy as np

from feature_service.catalogue import ItemCatalogue
from gateway.stages.types import Candidates


class PopularCandidates:
    """The catalogue's items ordered by recent popularity; scores are popularity in [0, 1]."""

    def __init__(self, catalogue: ItemCatalogue) -> None:
        order = np.argsort(-catalogue.popularity, kind="stable").astype(np.int32)
        top = float(catalogue.popularity[order[0]]) if len(order) else 1.0
        self._ranked = Candidates(order, (catalogue.popularity[order] / max(top, 1.0)))

    def retrieve(self, count: int) -> Candidates:
        """The `count` most popular items."""
        return self._ranked.take(np.arange(min(count, len(self._ranked))))


def candidate_count(configured: int, num_items: int, blocked: int) -> int:
    """How many candidates to fetch so that `num_items` survive filtering of `blocked` items."""
    return max(configured, num_items + blocked)
