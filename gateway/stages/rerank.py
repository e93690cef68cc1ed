"""Stage 7: re-rank for business rules and cut to the requested length.

Rules run in this fixed order, each a small pure function:
1. `diversify`: maximal marginal relevance with `model.reranker.diversity_weight` (0 keeps the
   ranker's order), similarity from the items' categories (and embeddings when given);
2. `cap_per_category`: at most N items of one top-level category (0 disables);
3. `truncate`: the first `num_items`.

Filters (out of stock, recently viewed, excluded) run before ranking, in the filter stage, so
the ranker never scores an item that could not be shown.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from feature_service.kernels import first_per_category, greedy_mmr
from gateway.stages.types import Candidates
from triton_models.config import RerankerSettings

POOL_FACTOR = 5
_NO_SIMILARITY = np.empty((0, 0), np.float32)
_NO_CATEGORIES = np.empty(0, np.int16)


def diversify(
    items: Candidates,
    category: npt.NDArray[np.int16],
    weight: float,
    count: int,
    embeddings: npt.NDArray[np.float32] | None = None,
) -> Candidates:
    """Greedy maximal marginal relevance: picks `count` items, each maximising
    `(1 - weight) * relevance - weight * max similarity to the items already picked`.

    Relevance is the item's score min-max scaled to [0, 1] within the list; similarity is 1
    for two items of the same category, or the cosine of their embeddings when `embeddings`
    (unit-normalised rows by catalogue position) is given. Scores are kept as ranked.

    Only the best `POOL_FACTOR * count` items compete (the list arrives sorted by score): far
    down the list relevance is too low to win back with diversity, and the greedy loop's cost
    grows with the pool.
    """
    if weight <= 0.0 or len(items) <= 1:
        return items
    pool = min(len(items), max(POOL_FACTOR * count, count + 10))
    items = Candidates(items.positions[:pool], items.scores[:pool])
    if embeddings is not None:
        # The pool's pairwise cosines in one BLAS call; the greedy picks run compiled.
        vectors = embeddings[items.positions]
        similarity = vectors @ vectors.T
        picks = greedy_mmr(items.scores, similarity, _NO_CATEGORIES, True, weight, count)
    else:
        cats = category[items.positions]
        picks = greedy_mmr(items.scores, _NO_SIMILARITY, cats, False, weight, count)
    return items.take(picks)


def cap_per_category(
    items: Candidates, category: npt.NDArray[np.int16], max_per_category: int
) -> Candidates:
    """Drops items beyond the first `max_per_category` of each category, keeping order."""
    if max_per_category <= 0 or len(items) == 0:
        return items
    return items.take(first_per_category(category[items.positions], max_per_category))


def truncate(items: Candidates, num_items: int) -> Candidates:
    """The first `num_items` items."""
    return Candidates(items.positions[:num_items], items.scores[:num_items])


def rerank(
    items: Candidates,
    category: npt.NDArray[np.int16],
    rules: RerankerSettings,
    num_items: int,
    embeddings: npt.NDArray[np.float32] | None = None,
) -> Candidates:
    """The rules in order: `diversify`, `cap_per_category`, `truncate` to `num_items`.

    Diversity picks a few more than needed (3x) when a category cap is on, so the cap can
    still fill the list.
    """
    pool = num_items * 3 if rules.max_per_category else num_items
    diverse = diversify(items, category, rules.diversity_weight, pool, embeddings)
    return truncate(cap_per_category(diverse, category, rules.max_per_category), num_items)
