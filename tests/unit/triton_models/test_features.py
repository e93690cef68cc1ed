"""Feature definitions (feature_service.definitions) against hand-computed values."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from feature_service.definitions import (
    CATEGORY_NAMES,
    FEATURE_NAMES,
    MAX_DAYS,
    NUM_FEATURES,
    Context,
    ItemArrays,
    PurchaseHistory,
    assemble_features,
    build_user_state,
    epoch_seconds,
    merge_candidates,
)

DAY = 86_400.0
T0 = epoch_seconds(datetime(2011, 10, 1))


def _items() -> ItemArrays:
    # Four items: prices 1, 3, 7, 15 GBP; categories 0, 0, 2, 5.
    return ItemArrays.from_columns(
        price=[1.0, 3.0, 7.0, 15.0],
        popularity=[0, 1, 3, 7],
        available=[True, False, True, True],
        category=[0, 0, 2, 5],
    )


def _history() -> PurchaseHistory:
    # Order A (T0): items 0 and 2 (item 0 twice in the order); order B (T0 + 2 days): item 0.
    # A line after the cut-off (T0 + 20 days) must be ignored.
    return PurchaseHistory(
        positions=np.array([0, 0, 2, 0, 3], np.int32),
        timestamps=np.array([T0, T0, T0, T0 + 2 * DAY, T0 + 20 * DAY]),
        quantities=np.array([1, 2, 3, 4, 5], np.float32),
        unit_prices=np.array([1.0, 1.0, 7.0, 3.0, 15.0], np.float32),
    )


def col(name: str) -> int:
    return FEATURE_NAMES.index(name)


def test_feature_names_are_unique_and_counted() -> None:
    assert len(set(FEATURE_NAMES)) == NUM_FEATURES == len(FEATURE_NAMES)
    assert FEATURE_NAMES[-1] == "cross_retrieval_score"
    assert sum(n.startswith("item_category_") for n in FEATURE_NAMES) == len(CATEGORY_NAMES)


def test_user_state_by_hand() -> None:
    state = build_user_state(_history(), _items(), T0 + 10 * DAY, "United Kingdom")

    assert state.item_positions.tolist() == [0, 2]
    assert state.item_counts.tolist() == [2.0, 1.0]  # item 0 in orders A and B
    assert state.item_last_purchase.tolist() == [T0 + 2 * DAY, T0]
    assert state.order_count == 2
    assert state.last_order == T0 + 2 * DAY
    expected_affinity = np.zeros(len(CATEGORY_NAMES), np.float32)
    expected_affinity[0], expected_affinity[2] = 3 / 4, 1 / 4
    np.testing.assert_allclose(state.category_affinity, expected_affinity)
    assert state.mean_log_price == pytest.approx(np.mean(np.log1p([1.0, 1.0, 7.0, 3.0])))


def test_new_user_state_is_empty() -> None:
    state = build_user_state(PurchaseHistory.empty(), _items(), T0)
    assert state.order_count == 0 and len(state.item_positions) == 0
    assert np.isnan(state.last_order)
    assert not state.category_affinity.any()


def test_assemble_features_by_hand() -> None:
    items = _items()
    now = datetime(2011, 10, 11, 6, 0)  # a Tuesday, 06:00 -> T0 + 10 days + 6 h
    state = build_user_state(_history(), items, now, "United Kingdom")
    candidates = np.array([2, 1], np.int32)
    context = Context(time=now, device=2, page=3, country="GB")

    x = assemble_features(state, items, candidates, context, np.array([0.5, -1.0], np.float32))

    assert x.shape == (2, NUM_FEATURES) and x.dtype == np.float32
    days_since_order = 8.25  # T0 + 2 days to T0 + 10 days 6 h
    expected_user = {
        "user_log_orders": np.log1p(2),
        "user_log_distinct_items": np.log1p(2),
        "user_days_since_last_order": days_since_order,
        "user_mean_log_price": state.mean_log_price,
        "user_is_new": 0.0,
        "user_country_uk": 1.0,
    }
    for name, value in expected_user.items():
        np.testing.assert_allclose(x[:, col(name)], value, rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(x[:, col("item_log_price")], np.log1p([7.0, 3.0]), rtol=1e-6)
    np.testing.assert_allclose(x[:, col("item_log_popularity")], np.log1p([3, 1]), rtol=1e-6)
    assert x[:, col("item_available")].tolist() == [1.0, 0.0]
    category_block = x[:, col(f"item_category_{CATEGORY_NAMES[0]}") :][:, : len(CATEGORY_NAMES)]
    assert category_block.sum(axis=1).tolist() == [1.0, 1.0]
    assert category_block[0, 2] == 1.0 and category_block[1, 0] == 1.0
    np.testing.assert_allclose(x[:, col("context_hour_sin")], np.sin(2 * np.pi * 6 / 24), atol=1e-6)
    np.testing.assert_allclose(x[:, col("context_hour_cos")], np.cos(2 * np.pi * 6 / 24), atol=1e-6)
    np.testing.assert_allclose(
        x[:, col("context_weekday_sin")], np.sin(2 * np.pi * 1 / 7), atol=1e-6
    )
    assert x[0, col("context_device_2")] == 1.0 and x[0, col("context_device_0")] == 0.0
    assert x[0, col("context_page_3")] == 1.0
    assert x[0, col("context_country_known")] == 1.0 and x[0, col("context_country_uk")] == 1.0
    # Cross features: item 2 was bought once, 10.25 days ago; item 1 never.
    np.testing.assert_allclose(x[:, col("cross_user_category_affinity")], [0.25, 0.75])
    np.testing.assert_allclose(
        x[:, col("cross_price_vs_user")], np.log1p([7.0, 3.0]) - state.mean_log_price, rtol=1e-5
    )
    np.testing.assert_allclose(x[:, col("cross_user_item_log_count")], [np.log1p(1), 0.0])
    assert x[:, col("cross_user_item_bought")].tolist() == [1.0, 0.0]
    np.testing.assert_allclose(x[:, col("cross_user_item_days_since")], [10.25, MAX_DAYS])
    np.testing.assert_allclose(x[:, col("cross_retrieval_score")], [0.5, -1.0])


def test_timezone_aware_and_naive_times_agree() -> None:
    items = _items()
    state = build_user_state(_history(), items, T0 + 10 * DAY)
    c = np.array([0, 3], np.int32)
    s = np.zeros(2, np.float32)
    naive = assemble_features(state, items, c, Context(datetime(2011, 10, 11, 6)), s)
    aware = assemble_features(state, items, c, Context(datetime(2011, 10, 11, 6, tzinfo=UTC)), s)
    np.testing.assert_array_equal(naive, aware)


def test_new_user_and_unknown_context() -> None:
    items = _items()
    state = build_user_state(PurchaseHistory.empty(), items, T0)
    x = assemble_features(
        state,
        items,
        np.array([1], np.int32),
        Context(datetime(2011, 1, 1), 99, -1),
        np.zeros(1, np.float32),
    )
    assert x[0, col("user_is_new")] == 1.0
    assert x[0, col("user_days_since_last_order")] == MAX_DAYS
    assert x[0, col("cross_price_vs_user")] == 0.0
    assert x[0, col("context_device_0")] == 1.0 and x[0, col("context_page_0")] == 1.0
    assert x[0, col("context_country_known")] == 0.0


def test_mismatched_scores_are_rejected() -> None:
    items = _items()
    state = build_user_state(PurchaseHistory.empty(), items, T0)
    with pytest.raises(ValueError, match="retrieval scores"):
        assemble_features(
            state,
            items,
            np.array([1], np.int32),
            Context(datetime(2011, 1, 1)),
            np.zeros(2, np.float32),
        )


def test_merge_candidates_keeps_first_occurrence_order() -> None:
    merged = merge_candidates(
        np.array([5, 3], np.int32), np.array([3, 9, 5], np.int32), np.array([1, 9], np.int32)
    )
    assert merged.tolist() == [5, 3, 9, 1]
    assert merge_candidates().tolist() == []
