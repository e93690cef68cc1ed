"""Ranking metrics against hand-worked examples."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from triton_models.metrics import (
    hit_rate_at_k,
    ndcg_at_k,
    rank_by_score,
    ranking_metrics,
    recall_at_k,
    reciprocal_rank,
)


def a(*values: int) -> npt.NDArray[np.int32]:
    return np.asarray(values, dtype=np.int32)


def test_ndcg_by_hand() -> None:
    # Hits at ranks 1 and 3 of 2 relevant: DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3).
    assert ndcg_at_k(a(7, 1, 8, 2), a(7, 8), 10) == pytest.approx(1.5 / (1 + 1 / np.log2(3)))
    assert ndcg_at_k(a(7, 8), a(7, 8), 10) == pytest.approx(1.0)
    assert ndcg_at_k(a(1, 2), a(7, 8), 10) == 0.0
    # Only the first k count, and the ideal is capped at k hits.
    assert ndcg_at_k(a(1, 7), a(7, 8, 9), 1) == 0.0
    assert ndcg_at_k(a(7, 1), a(7, 8, 9), 1) == pytest.approx(1.0)


def test_recall_hit_rate_mrr_by_hand() -> None:
    assert recall_at_k(a(7, 1, 8, 2), a(7, 8, 9, 10), 3) == pytest.approx(0.5)
    assert hit_rate_at_k(a(1, 2, 7), a(7), 2) == 0.0
    assert hit_rate_at_k(a(1, 2, 7), a(7), 3) == 1.0
    assert reciprocal_rank(a(1, 2, 7), a(7, 2)) == pytest.approx(0.5)
    assert reciprocal_rank(a(1, 2), a(9)) == 0.0


def test_ranking_metrics_averages_and_skips_empty_queries() -> None:
    result = ranking_metrics([a(7, 1), a(1, 7), a(3)], [a(7), a(7), a()], k=10)
    assert result["queries"] == 2
    assert result["hr@10"] == 1.0
    assert result["mrr"] == pytest.approx(0.75)
    assert result["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3)) / 2)


def test_rank_by_score_per_query_with_stable_ties() -> None:
    positions = a(10, 11, 12, 20, 21)
    scores = np.array([0.1, 0.9, 0.1, 0.0, 0.0], np.float32)
    ranked = rank_by_score(positions, scores, np.array([0, 3, 5]))
    assert [r.tolist() for r in ranked] == [[11, 10, 12], [20, 21]]
