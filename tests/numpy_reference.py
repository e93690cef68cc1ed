"""The pipeline's NumPy implementations from before the compiled kernels
(feature_service/kernels.py), kept verbatim as the reference the kernels are tested against:
same inputs, same items, order, scores and features, bit for bit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from feature_service.definitions import (
    _CATEGORY_START,
    _CROSS_START,
    _ITEM_START,
    NUM_FEATURES,
    Context,
    ItemArrays,
    PurchaseHistory,
    UserState,
    _days,
    _shared_row,
    epoch_seconds,
)
from gateway.stages.types import Candidates

POOL_FACTOR = 5


def assemble_features(
    state: UserState,
    items: ItemArrays,
    candidates: npt.NDArray[np.int32],
    context: Context,
    retrieval_scores: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    n = len(candidates)
    if len(retrieval_scores) != n:
        raise ValueError(f"{n} candidates but {len(retrieval_scores)} retrieval scores")
    out = np.empty((n, NUM_FEATURES), dtype=np.float32)
    out[:] = _shared_row(state, context)
    if n == 0:
        return out
    category = items.category[candidates].astype(np.intp)
    log_price = items.log_price[candidates]
    out[:, _ITEM_START] = log_price
    out[:, _ITEM_START + 1] = items.log_popularity[candidates]
    out[:, _ITEM_START + 2] = items.available[candidates]
    out[np.arange(n), _CATEGORY_START + category] = 1.0

    owned = state.item_positions
    if len(owned):
        index = np.minimum(np.searchsorted(owned, candidates), len(owned) - 1)
        bought = owned[index] == candidates
        count = np.where(bought, state.item_counts[index], 0.0)
        last = np.where(bought, state.item_last_purchase[index], -np.inf)
        price_gap = log_price - np.float32(state.mean_log_price)
    else:
        bought = np.zeros(n, dtype=bool)
        count = np.zeros(n, dtype=np.float32)
        last = np.full(n, -np.inf)
        price_gap = np.zeros(n, dtype=np.float32)
    c = _CROSS_START
    out[:, c] = state.category_affinity[category]
    out[:, c + 1] = price_gap
    out[:, c + 2] = np.log1p(count)
    out[:, c + 3] = bought
    out[:, c + 4] = _days(epoch_seconds(context.time), last)
    out[:, c + 5] = retrieval_scores
    return out


def merge_candidates(*sources: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    if not sources:
        return np.empty(0, np.int32)
    stacked = np.concatenate([np.asarray(s, dtype=np.int32) for s in sources])
    _, first = np.unique(stacked, return_index=True)
    merged: npt.NDArray[np.int32] = stacked[np.sort(first)]
    return merged


def top_k_exact(
    user_vectors: npt.NDArray[np.float32],
    item_vectors: npt.NDArray[np.float32],
    k: int,
    exclude: Sequence[npt.NDArray[np.int32]] | None = None,
) -> npt.NDArray[np.int32]:
    scores = user_vectors @ item_vectors.T
    if exclude is not None:
        for row, positions in enumerate(exclude):
            scores[row, positions] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int32)


def history(
    snapshot: PurchaseHistory, recorded: list[tuple[int, float, float, float]]
) -> PurchaseHistory:
    """PurchaseHistories.history: the snapshot slice with the recorded lines appended."""
    if not recorded:
        return snapshot
    extra = np.asarray(recorded, dtype=np.float64)
    return PurchaseHistory(
        np.concatenate([snapshot.positions, extra[:, 0].astype(np.int32)]),
        np.concatenate([snapshot.timestamps, extra[:, 1]]),
        np.concatenate([snapshot.quantities, extra[:, 2].astype(np.float32)]),
        np.concatenate([snapshot.unit_prices, extra[:, 3].astype(np.float32)]),
    )


def recent_items(history: PurchaseHistory, limit: int) -> npt.NDArray[np.int32]:
    if len(history.positions) == 0:
        return np.empty(0, np.int32)
    newest_first = history.positions[np.argsort(-history.timestamps, kind="stable")]
    _, first = np.unique(newest_first, return_index=True)
    recent: npt.NDArray[np.int32] = newest_first[np.sort(first)][:limit]
    return recent


def nearest(
    user_vectors: npt.NDArray[np.float32],
    item_vectors: npt.NDArray[np.float32],
    row: int,
    count: int,
    exclude: npt.NDArray[np.int32],
) -> npt.NDArray[np.int32]:
    """RetrievalIndex.nearest's exact search."""
    vector = user_vectors[row]
    found: npt.NDArray[np.int32] = top_k_exact(vector[None, :], item_vectors, count, [exclude])[0]
    return found


def retrieve(
    nearest_items: npt.NDArray[np.int32],
    past_items: npt.NDArray[np.int32],
    popular: npt.NDArray[np.int32],
    item_vectors: npt.NDArray[np.float32],
    vector: npt.NDArray[np.float32],
) -> Candidates:
    """CandidateRetriever.retrieve with an index."""
    positions = merge_candidates(nearest_items, past_items[:200], popular)
    scores = item_vectors[positions] @ vector
    return Candidates(positions, scores.astype(np.float32))


def filter_candidates(
    candidates: Candidates,
    blocked: npt.NDArray[np.int32],
    available: npt.NDArray[np.bool_] | None,
) -> Candidates:
    keep = ~np.isin(candidates.positions, blocked)
    if available is not None:
        keep &= available[candidates.positions]
    return candidates.take(keep)


def order(candidates: Candidates, scores: npt.NDArray[np.float32]) -> Candidates:
    """Recommender._rank's ordering by the ranker's scores."""
    by_score = np.argsort(-scores, kind="stable")
    return Candidates(candidates.positions[by_score], scores[by_score])


def diversify(
    items: Candidates,
    category: npt.NDArray[np.int16],
    weight: float,
    count: int,
    embeddings: npt.NDArray[np.float32] | None = None,
) -> Candidates:
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
    base = (1.0 - weight) * relevance
    penalised = base[None, :] - weight * (vectors @ vectors.T).astype(np.float64)
    gain = base.copy()
    picked: list[int] = []
    for _ in range(min(count, n)):
        best = int(np.argmax(gain))
        picked.append(best)
        np.minimum(gain, penalised[best], out=gain)
        gain[best] = -np.inf
    return items.take(np.asarray(picked, dtype=np.intp))


def cap_per_category(
    items: Candidates, category: npt.NDArray[np.int16], max_per_category: int
) -> Candidates:
    if max_per_category <= 0 or len(items) == 0:
        return items
    cats = category[items.positions]
    by_category = np.argsort(cats, kind="stable")
    sorted_cats = cats[by_category]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_cats)) + 1]
    within = np.arange(len(cats)) - np.repeat(starts, np.diff(np.r_[starts, len(cats)]))
    rank_in_category = np.empty_like(within)
    rank_in_category[by_category] = within
    return items.take(rank_in_category < max_per_category)


def truncate(items: Candidates, num_items: int) -> Candidates:
    return items.take(np.arange(min(num_items, len(items))))


def mixed_pick_values(
    buy_again: npt.NDArray[np.int32],
    discover: npt.NDArray[np.int32],
    owned: npt.NDArray[np.int32],
    num_items: int,
    ranker: tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]],
    discovery: tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]],
    weight: float,
) -> tuple[int, npt.NDArray[np.float64]]:
    """The NumPy version of `feature_service.surfaces.discovery_slots_for` before its compiled
    kernel: the slots for no pick, and the value of the list with each number of picks."""

    def probabilities(
        items: npt.NDArray[np.int32], scored: tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]
    ) -> npt.NDArray[np.float64]:
        positions, scores = scored
        if len(positions) == 0:
            return np.zeros(len(items))
        match = items[:, None] == positions[None, :]
        found = scores[match.argmax(axis=1)].astype(np.float64)
        return np.where(match.any(axis=1), found, 0.0)

    head = buy_again[:num_items]
    is_owned = np.isin(head, owned)
    owned_at = np.flatnonzero(is_owned)
    room = num_items - len(head)
    first = discover[: room + len(owned_at) + len(head)]
    picks = first[~np.isin(first, head)][: room + len(owned_at)]
    listed = np.concatenate([head, picks])
    p_ranker, p_new = probabilities(listed, ranker), probabilities(listed, discovery)
    given_up = np.concatenate([[0.0], np.cumsum(p_ranker[owned_at][::-1])])
    taken = np.concatenate([[0.0], np.cumsum(p_ranker[len(head) :])])
    drops = np.maximum(0, np.arange(len(picks) + 1) - room)
    expected = p_ranker[: len(head)].sum() - given_up[drops] + taken
    total = float(ranker[1].sum(dtype=np.float64))
    misses = np.concatenate([[1.0], np.cumprod(1.0 - p_new[len(head) :])])
    no_new_hit = np.prod(1.0 - p_new[: len(head)][~is_owned]) * misses
    values = expected / (total if total > 0 else 1.0) + weight * (1.0 - no_new_hit)
    return len(head) - len(owned_at), values
