"""Ranking metrics against hand-worked examples."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from triton_models.ranking_quality import (
    catalogue_coverage,
    hit_rate_at_k,
    ndcg_at_k,
    own_item_share,
    rank_by_score,
    ranking_metrics,
    recall_at_k,
    reciprocal_rank,
    segment_metrics,
    split_by_history,
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


def test_segments_score_reorders_and_new_items_apart() -> None:
    # Query 0 bought 1 and 2 before; it buys 1 (re-order) and 5 (new) in the period.
    # Query 1 has no history; it buys 6 (new).
    lists = [a(1, 3, 5), a(4, 6)]
    result = segment_metrics(lists, [a(1, 5), a(6)], [a(1, 2), a()], n_items=10, k=2)
    assert result["reorder"]["queries"] == 1
    assert result["reorder"]["recall@2"] == 1.0
    assert result["discovery"]["queries"] == 2
    # 5 sits at rank 3 (outside the top 2); 6 is at rank 2.
    assert result["discovery"]["recall@2"] == pytest.approx(0.5)
    assert result["discovery"]["hr@2"] == pytest.approx(0.5)
    assert result["overall"]["recall@2"] == pytest.approx((0.5 + 1.0) / 2)
    # Slots in the top 2: (1, 3) and (4, 6); one of four holds an own item.
    assert result["own_item_share@2"] == pytest.approx(0.25)
    assert result["coverage@2"] == pytest.approx(4 / 10)


def test_split_by_history() -> None:
    reorders, new = split_by_history([a(1, 5, 7)], [a(7, 1, 2)])
    assert reorders[0].tolist() == [1, 7]
    assert new[0].tolist() == [5]


def test_own_share_and_coverage_of_nothing() -> None:
    assert own_item_share([], []) == 0.0
    assert catalogue_coverage([], 10) == 0.0


def test_ranking_metrics_equal_the_per_list_functions() -> None:
    rng = np.random.default_rng(7)
    ranked = [rng.permutation(300)[: rng.integers(1, 150)].astype(np.int32) for _ in range(200)]
    relevant = [rng.integers(0, 300, size=rng.integers(0, 30)).astype(np.int32) for _ in ranked]
    rows = [
        (
            ndcg_at_k(r, rel, 10),
            recall_at_k(r, rel, 10),
            hit_rate_at_k(r, rel, 10),
            reciprocal_rank(r, rel),
        )
        for r, rel in zip(ranked, relevant, strict=True)
        if len(rel)
    ]
    expected = np.asarray(rows).mean(axis=0)
    result = ranking_metrics(ranked, relevant, k=10)
    assert [result["ndcg@10"], result["recall@10"], result["hr@10"], result["mrr"]] == list(
        expected
    )
    assert result["queries"] == len(rows)
