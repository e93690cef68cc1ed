"""Stage 7: re-rank for business rules and cut to the requested length.

Rules run in this fixed order, each a small pure function:
1. `cap_per_category`: at most N items of one top-level category (0 disables);
2. `truncate`: the first `num_items`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gateway.stages.types import Candidates


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
