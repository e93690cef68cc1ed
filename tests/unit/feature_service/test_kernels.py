"""The compiled kernels (feature_service/kernels.py) behind the shared feature definitions and the
gateway's stages, against the NumPy implementations they replaced (tests/numpy_reference.py):
bit-for-bit equal on random inputs, including ties, NaN, signed zeros, new users and empty
lists; explicit about the orders NumPy left to chance (ties in the retrieval top-k)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from feature_service import kernels
from feature_service.definitions import (
    CATEGORY_NAMES,
    NUM_FEATURES,
    Context,
    ItemArrays,
    PurchaseHistory,
    assemble_features,
    build_user_state,
    epoch_seconds,
    merge_candidates,
    top_k_exact,
)
from gateway.stages.filter import filter_candidates
from gateway.stages.rerank import cap_per_category, diversify, truncate
from gateway.stages.types import Candidates
from tests import numpy_reference as reference

N_ITEMS = 400
DAY = 86_400.0


def _items(rng: np.random.Generator) -> ItemArrays:
    return ItemArrays.from_columns(
        price=rng.gamma(2.0, 3.0, N_ITEMS),
        popularity=rng.integers(0, 500, N_ITEMS),
        available=rng.random(N_ITEMS) < 0.8,
        category=rng.integers(0, len(CATEGORY_NAMES), N_ITEMS),
    )


def _history(rng: np.random.Generator, lines: int, now: float) -> PurchaseHistory:
    orders = rng.integers(1, max(lines // 3, 1) + 1, lines)
    # Orders spread over two years before `now`, a few after it (ignored or clipped).
    order_time = now - rng.uniform(-5 * DAY, 700 * DAY, lines // 3 + 2)
    return PurchaseHistory(
        positions=rng.integers(0, N_ITEMS, lines).astype(np.int32),
        timestamps=np.round(order_time[orders]),
        quantities=rng.integers(1, 10, lines).astype(np.float32),
        unit_prices=rng.gamma(2.0, 2.0, lines).astype(np.float32),
    )


@pytest.mark.parametrize("seed", range(12))
def test_features_equal_numpy_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    items = _items(rng)
    when = datetime(2011, 11, 3, 7, 41, tzinfo=UTC)
    now = epoch_seconds(when)
    lines = [0, 1, 5, 40, 300][seed % 5]
    cutoff: float | datetime = when if seed % 2 else float("inf")
    state = build_user_state(
        _history(rng, lines, now), items, cutoff, ["", "GB", "France"][seed % 3]
    )
    candidates = rng.choice(N_ITEMS, 250, replace=False).astype(np.int32)
    if len(state.item_positions):  # make sure bought items are among the candidates
        candidates[: min(20, len(state.item_positions))] = state.item_positions[:20]
    scores = rng.normal(size=250).astype(np.float32)
    context = Context(time=when, device=seed % 6, page=seed % 8, country=["", "GB", "DE"][seed % 3])

    got = assemble_features(state, items, candidates, context, scores)
    want = reference.assemble_features(state, items, candidates, context, scores)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32 and got.flags.c_contiguous


def test_features_of_no_candidates_and_bad_positions() -> None:
    rng = np.random.default_rng(0)
    items = _items(rng)
    state = build_user_state(PurchaseHistory.empty(), items, 0.0)
    context = Context(datetime(2011, 1, 1))
    empty = assemble_features(state, items, np.empty(0, np.int32), context, np.empty(0, np.float32))
    assert empty.shape == (0, NUM_FEATURES)
    with pytest.raises(IndexError, match="outside the item arrays"):
        assemble_features(
            state, items, np.array([N_ITEMS], np.int32), context, np.zeros(1, np.float32)
        )


@pytest.mark.parametrize("seed", range(8))
def test_top_k_equals_numpy_without_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(7, 16)).astype(np.float32)
    items = rng.normal(size=(900, 16)).astype(np.float32)
    exclude = [
        rng.choice(900, int(rng.integers(0, 60)), replace=False).astype(np.int32) for _ in range(7)
    ]
    for k in (1, 10, 500, 900):
        np.testing.assert_array_equal(
            top_k_exact(users, items, k, exclude), reference.top_k_exact(users, items, k, exclude)
        )
    np.testing.assert_array_equal(
        top_k_exact(users.astype(np.float64), items.astype(np.float64), 50),
        reference.top_k_exact(users.astype(np.float64), items.astype(np.float64), 50),
    )


def test_top_k_orders_ties_by_position_and_excluded_last() -> None:
    items = np.array([[1, 0], [0, 1], [2, 0], [1, 1], [1, 0], [3, 0]], np.float32)
    user = np.array([[1, 0]], np.float32)  # scores 1, 0, 2, 1, 1, 3
    assert top_k_exact(user, items, 4).tolist() == [[5, 2, 0, 3]]
    # Excluded items only when nothing else is left, then by position.
    excluded = [np.array([5, 0], np.int32)]
    assert top_k_exact(user, items, 6, excluded).tolist() == [[2, 3, 4, 1, 0, 5]]
    assert top_k_exact(user, items, 0).shape == (1, 0)
    assert top_k_exact(user, items, 99).shape == (1, 6)
    with pytest.raises(IndexError, match="excluded column"):
        top_k_exact(user, items, 2, [np.array([6], np.int32)])
    with pytest.raises(ValueError, match="exclusion lists"):
        top_k_exact(user, items, 2, [])


def test_top_k_ranks_nan_last() -> None:
    scores = np.array([[0.5, np.nan, 0.7, -np.inf, 0.1]], np.float32)
    got = kernels.top_k_rows(scores, 5, np.empty(0, np.int32), np.zeros(2, np.int64))
    assert got.tolist() == [[2, 0, 4, 3, 1]]


@pytest.mark.parametrize("high", [50, 5_000, 2**31 - 1])
def test_merge_equals_numpy(high: int) -> None:
    rng = np.random.default_rng(high)
    for _ in range(20):
        sources = [
            rng.integers(0 if high < 2**31 - 1 else -high, high, int(rng.integers(0, 300))).astype(
                np.int32
            )
            for _ in range(3)
        ]
        np.testing.assert_array_equal(
            merge_candidates(*sources), reference.merge_candidates(*sources)
        )
    assert merge_candidates(np.empty(0, np.int32)).tolist() == []


def test_filter_equals_numpy() -> None:
    rng = np.random.default_rng(3)
    available = rng.random(N_ITEMS) < 0.7
    for _ in range(30):
        n = int(rng.integers(0, 300))
        got = Candidates(
            rng.choice(N_ITEMS, n, replace=False).astype(np.int32),
            rng.random(n, dtype=np.float32),
        )
        blocked = np.unique(rng.integers(-5, N_ITEMS + 5, int(rng.integers(0, 40)))).astype(
            np.int32
        )
        for stock in (available, None):
            _assert_same(
                filter_candidates(got, blocked, stock),
                reference.filter_candidates(got, blocked, stock),
            )
    with pytest.raises(IndexError, match="availability"):
        filter_candidates(
            Candidates(np.array([N_ITEMS], np.int32), np.zeros(1, np.float32)),
            np.empty(0, np.int32),
            available,
        )


def test_order_equals_numpy_with_ties_nan_and_signed_zeros() -> None:
    rng = np.random.default_rng(4)
    special = np.array([np.nan, -np.nan, 0.0, -0.0, np.inf, -np.inf], np.float32)
    for _ in range(30):
        scores = np.round(rng.normal(size=int(rng.integers(0, 600))), 1).astype(np.float32)
        if len(scores) > 10:
            scores[rng.choice(len(scores), 6, replace=False)] = special
        np.testing.assert_array_equal(
            kernels.order_by_score(scores), np.argsort(-scores, kind="stable")
        )
    # Triton's answer arrives as a read-only buffer.
    frozen = np.frombuffer(np.arange(5, dtype=np.float32).tobytes(), np.float32)
    assert kernels.order_by_score(frozen).tolist() == [4, 3, 2, 1, 0]


@pytest.mark.parametrize("seed", range(10))
def test_rerank_equals_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    category = rng.integers(0, 6, N_ITEMS).astype(np.int16)
    vectors = rng.normal(size=(N_ITEMS, 8)).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    n = int(rng.integers(0, 400))
    scores = np.sort(np.round(rng.random(n), 2).astype(np.float32))[::-1].copy()  # with ties
    if seed == 3 and n:
        scores[:] = 0.5  # no spread: relevance is 1 for all
    if seed == 4 and n > 5:
        scores[2] = np.nan
    ranked = Candidates(rng.choice(N_ITEMS, n, replace=False).astype(np.int32), scores)
    for embeddings in (unit, unit.astype(np.float64), None):
        for weight, count, cap in ((0.3, 30, 4), (0.9, 10, 1), (0.0, 30, 0), (0.5, 200, 2)):
            got = truncate(
                cap_per_category(
                    diversify(ranked, category, weight, count, embeddings), category, cap
                ),
                10,
            )
            want = reference.truncate(
                reference.cap_per_category(
                    reference.diversify(ranked, category, weight, count, embeddings),
                    category,
                    cap,
                ),
                10,
            )
            _assert_same(got, want)


def _assert_same(got: Candidates, want: Candidates) -> None:
    np.testing.assert_array_equal(got.positions, want.positions)
    np.testing.assert_array_equal(got.scores, want.scores)


def test_contained_equals_isin_on_dense_sparse_and_read_only_arrays() -> None:
    rng = np.random.default_rng(9)
    for case in range(60):
        values = rng.integers(-3, N_ITEMS, int(rng.integers(0, 300))).astype(np.int32)
        members = rng.integers(-3, N_ITEMS, int(rng.integers(0, 200))).astype(np.int32)
        if case % 3 == 0:  # a range too sparse for a presence table: the sorted search
            members = rng.integers(0, 2**31 - 1, int(rng.integers(1, 200))).astype(np.int32)
            values = np.concatenate([values, members[:5]]).astype(np.int32)
        if case % 4 == 0:
            members.setflags(write=False)
        np.testing.assert_array_equal(kernels.contained(values, members), np.isin(values, members))
