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

from gateway.stages.types import Candidates

POOL_FACTOR = 5


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
    items = items.take(np.arange(min(len(items), max(POOL_FACTOR * count, count + 10))))
    n = len(items)
    scores = items.scores.astype(np.float64)
    spread = scores.max() - scores.min()
    relevance = (scores - scores.min()) / spread if spread > 0 else np.ones(n)
    if embeddings is not None:
        vectors = embeddings[items.positions]
    else:
        cats = category[items.positions]
        vectors = (cats[:, None] == np.unique(cats)[None, :]).astype(np.float32)
    # gain_i = base_i - weight * max(0, max over picked j of sim_ij)
    #        = min(base_i, min over picked j of (base_i - weight * sim_ij)),
    # so with every pair's term computed at once each pick is one argmax and one minimum.
    base = (1.0 - weight) * relevance
    penalised = base[None, :] - weight * (vectors @ vectors.T).astype(np.float64)
    gain = base.copy()
    order: list[int] = []
    for _ in range(min(count, n)):
        best = int(np.argmax(gain))
        order.append(best)
        np.minimum(gain, penalised[best], out=gain)
        gain[best] = -np.inf
    return items.take(np.asarray(order, dtype=np.intp))


def cap_per_category(
    items: Candidates, category: npt.NDArray[np.int16], max_per_category: int
) -> Candidates:
    """Drops items beyond the first `max_per_category` of each category, keeping order."""
    if max_per_category <= 0 or len(items) == 0:
        return items
    cats = category[items.positions]
    # Rank of each item within its category, in list order: 0 for the first of a category.
    order = np.argsort(cats, kind="stable")
    sorted_cats = cats[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_cats)) + 1]
    within = np.arange(len(cats)) - np.repeat(starts, np.diff(np.r_[starts, len(cats)]))
    rank_in_category = np.empty_like(within)
    rank_in_category[order] = within
    return items.take(rank_in_category < max_per_category)


def truncate(items: Candidates, num_items: int) -> Candidates:
    """The first `num_items` items."""
    return items.take(np.arange(min(num_items, len(items))))
