"""Retrieval: interaction weights, exact and Annoy top-k, recall, ALS on a toy matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feature_service.definitions import top_k_exact
from triton_models import retrieval


def _events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "b", "b"],
            "position": np.array([0, 0, 1, 2, 2], np.int32),
            "quantity": [1, 3, 2, 1, 1],
            "timestamp": pd.to_datetime(
                ["2011-01-01", "2011-03-02", "2011-03-02", "2011-03-02", "2011-05-01"]
            ),
        }
    )


def test_interaction_weights_decay_with_age_and_skip_the_future() -> None:
    users = np.array(["a", "b"], dtype=object)
    as_of = pd.Timestamp("2011-03-02")
    matrix = retrieval.interaction_matrix(_events(), users, 3, as_of, half_life_days=60.0)
    dense = matrix.toarray()
    # a/item 0: one line 60 days old (half weight), one of today; the future line is ignored.
    assert dense[0, 0] == pytest.approx(np.log1p(1) * 0.5 + 0, rel=1e-6)  # the 2nd is at as_of
    assert dense[1, 1] == 0.0 and dense[1, 2] == 0.0  # lines at as_of are not "before" it


def test_exact_top_k_excludes_and_orders() -> None:
    items = np.array([[1, 0], [0, 1], [2, 0], [1, 1]], np.float32)
    users = np.array([[1, 0], [0, 1]], np.float32)
    top = top_k_exact(users, items, 2, exclude=[np.array([2], np.int32), np.empty(0, np.int32)])
    assert top.tolist() == [[0, 3], [1, 3]]


def test_annoy_with_enough_search_matches_exact() -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(300, 8)).astype(np.float32)
    users = rng.normal(size=(20, 8)).astype(np.float32)
    index = retrieval.build_annoy(items, n_trees=20)
    approx = retrieval.annoy_top_k(index, users, 10, search_k=300 * 20)
    exact = top_k_exact(users, items, 10)
    overlap = np.mean([len(np.intersect1d(x, y)) / 10 for x, y in zip(approx, exact, strict=True)])
    assert overlap >= 0.95
    choice = retrieval.choose_annoy(
        items, users, k=10, target_overlap=0.9, trees=(5, 10), search_multipliers=(1, 8)
    )
    assert choice.overlap >= 0.9 and len(choice.grid) == 4


def test_recall_at_k_by_hand() -> None:
    found = [np.array([1, 2, 3], np.int32), np.array([9], np.int32), np.array([4], np.int32)]
    relevant = [np.array([2, 5], np.int32), np.array([9], np.int32), np.empty(0, np.int32)]
    assert retrieval.recall_at_k(found, relevant, 3) == pytest.approx((0.5 + 1.0) / 2)
    assert retrieval.recall_at_k(found, relevant, 1) == pytest.approx((0.0 + 1.0) / 2)


def test_popular_excludes_own_items() -> None:
    lists = retrieval.top_k_popular(np.array([5, 9, 1, 7]), 2, [np.array([1], np.int32)])
    assert lists[0].tolist() == [3, 0]


def test_als_fits_and_maps_users() -> None:
    events = _events()
    emb = retrieval.fit_als(
        events,
        3,
        pd.Timestamp("2012-01-01"),
        retrieval.AlsParams(factors=4, iterations=3, threads=1),
    )
    assert emb.users.shape == (2, 4) and emb.items.shape == (3, 4)
    assert emb.user_rows(["b", "zzz", "a"]).tolist() == [1, -1, 0]
    assert not emb.user_vectors(["zzz"]).any()
