"""The discovery objective's data and lists, and the discovery baselines, on tiny sets."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from feature_service.definitions import FEATURE_NAMES, NUM_FEATURES
from feature_service.surfaces import DISCOVERY_WEIGHT, Scored, discovery_slots_for, mixed_order
from triton_models.dataset import RankingSet
from triton_models.discovery import discovery_lists, new_items_only, owned_rows
from triton_models.evaluate import (
    choose_discovery_weight,
    discovery_targets,
    item_to_item_lists,
    popularity_skip_own_lists,
    purchase_matrix,
    surface_lists,
)

BOUGHT = FEATURE_NAMES.index("cross_user_item_bought")


def a(*values: int) -> npt.NDArray[np.int32]:
    return np.asarray(values, dtype=np.int32)


def ranking_set(
    candidates: list[list[int]], history: list[list[int]], relevant: list[list[int]]
) -> RankingSet:
    """Queries whose candidates carry the serving code's "bought" flag from `history`."""
    positions = np.concatenate([a(*c) for c in candidates])
    owner = np.repeat(np.arange(len(candidates)), [len(c) for c in candidates])
    features = np.zeros((len(positions), NUM_FEATURES), np.float32)
    features[:, BOUGHT] = [p in history[q] for p, q in zip(positions, owner, strict=True)]
    labels = np.asarray(
        [p in relevant[q] for p, q in zip(positions, owner, strict=True)], np.float32
    )
    return RankingSet(
        user_ids=[str(q) for q in range(len(candidates))],
        offsets=np.concatenate([[0], np.cumsum([len(c) for c in candidates])]).astype(np.int64),
        positions=positions,
        features=features,
        labels=labels,
        relevant=[a(*r) for r in relevant],
        history=[a(*h) for h in history],
        user_vectors=np.zeros((len(candidates), 4), np.float32),
    )


def test_new_items_only_keeps_unowned_rows_and_new_targets() -> None:
    data = ranking_set([[1, 2, 3], [4, 5]], [[1], []], [[1, 3], [5]])
    assert owned_rows(data).tolist() == [True, False, False, False, False]
    new = new_items_only(data)
    assert new.offsets.tolist() == [0, 2, 4]
    assert new.positions.tolist() == [2, 3, 4, 5]
    assert new.labels.tolist() == [0.0, 1.0, 0.0, 1.0]
    # The re-order of item 1 is no target of the discovery objective.
    assert [r.tolist() for r in new.relevant] == [[3], [5]]


def test_discovery_lists_rank_only_unowned_candidates() -> None:
    data = ranking_set([[1, 2, 3], [4, 5]], [[1], []], [[1, 3], [5]])
    scores = np.asarray([0.9, 0.1, 0.5, 0.2, 0.3], np.float32)
    lists = discovery_lists(data, scores)
    assert [x.tolist() for x in lists] == [[3, 2], [5, 4]]


def test_popularity_skip_own() -> None:
    data = ranking_set([[0]], [[2]], [[1]])
    lists = popularity_skip_own_lists(data, np.asarray([1, 3, 9, 2], np.float32))
    assert lists[0].tolist() == [1, 3, 0]


def test_item_to_item_recommends_co_purchases_and_skips_own() -> None:
    # Customers 10 and 11 buy items 0 and 1 together; 12 buys 2 and 3 together.
    users = np.asarray([10, 10, 11, 11, 12, 12])
    purchases = purchase_matrix(users, a(0, 1, 0, 1, 2, 3), n_items=5)
    assert purchases.shape == (3, 5)
    data = ranking_set([[4]], [[0]], [[1]])
    lists = item_to_item_lists(data, purchases, np.asarray([5, 4, 3, 2, 1], np.float32))
    # 1 is 0's only neighbour; then popularity without own items.
    assert lists[0].tolist() == [1, 2, 3, 4]


def test_surfaces_and_targets() -> None:
    data = ranking_set([[1, 2, 3, 4]], [[1, 2]], [[1, 4]])
    buy_again, discover = [a(1, 2, 3, 4)], [a(4, 3)]
    lists = surface_lists(data, buy_again, discover)
    assert "MIXED" not in lists  # served MIXED needs both heads' scores
    assert lists["MIXED (1 discovery slots)"][0][:2].tolist() == [1, 2]
    assert lists["MIXED (3 discovery slots)"][0][:4].tolist() == [1, 2, 3, 4]
    m = {"recall@10": 0.5, "hr@10": 0.5}
    segments = {
        name: {"overall": m, "reorder": m, "discovery": m}
        for name in ("DISCOVER", "popularity_skip_own", "BUY_AGAIN", "ranker_v2_int8")
    }
    segments["MIXED"] = {
        "overall": {"recall@10": 0.4},
        "discovery": {"recall@10": 0.2, "hr@10": 0.36},
    }
    result = discovery_targets(segments)
    assert result["MIXED discovery HR@10 >= 0.35"]
    assert not result["DISCOVER recall@10 on new products >= 1.25x popularity_skip_own"]
    assert not result["MIXED overall recall@10 within 5% of today's (ranker_v2_int8)"]
    assert discovery_targets({}) == {}


def _ten_owned_and_one_new(
    first: int, relevant: list[int], new_probability: float
) -> tuple[list[int], list[int], list[int], list[float], list[float]]:
    """A query over items first..first+10: the first ten owned (ranker 0.1 each), the last new
    (ranker 0, discovery ``new_probability``). Taking the new item drops the tenth owned one,
    which MIXED does once the weight exceeds 0.1 / new_probability."""
    items = list(range(first, first + 11))
    return items, items[:10], relevant, [0.1] * 10 + [0.0], [0.0] * 10 + [new_probability]


def test_served_mixed_takes_the_slots_discovery_slots_for_finds() -> None:
    first = _ten_owned_and_one_new(1, [1, 11], 0.45)
    data = ranking_set([first[0]], [first[1]], [first[2]])
    ranker, discovery = np.asarray(first[3], np.float32), np.asarray(first[4], np.float32)
    buy_again, discover = [a(*first[0])], [a(11)]
    mixed = surface_lists(data, buy_again, discover, ranker, discovery)["MIXED"]
    slots = discovery_slots_for(
        buy_again[0],
        discover[0],
        data.history[0],
        10,
        Scored(data.positions, ranker),
        Scored(data.positions, discovery),
        DISCOVERY_WEIGHT,
    )
    expected = mixed_order(buy_again[0], a(11), data.history[0], 10, slots)
    assert mixed[0].tolist() == expected.tolist()


def test_discovery_weight_reaches_most_customers_within_the_recall_bound() -> None:
    # Query 1 bought its new item 11: taking it (weight > 0.1 / 0.45 = 0.222) doubles its
    # recall. Query 2 re-ordered item 30, its tenth owned one, which taking its new item 31
    # (weight > 0.1 / 0.35 = 0.286) pushes out: overall recall falls to 2/3 of the ranker's.
    queries = [
        _ten_owned_and_one_new(1, [1, 11], 0.45),
        _ten_owned_and_one_new(21, [30], 0.35),
    ]
    data = ranking_set([q[0] for q in queries], [q[1] for q in queries], [q[2] for q in queries])
    ranker = np.asarray([p for q in queries for p in q[3]], np.float32)
    discovery = np.asarray([p for q in queries for p in q[4]], np.float32)
    choice = choose_discovery_weight(data, ranker, discovery)
    assert choice["weight"] == 0.23
    grid = choice["grid"]
    assert grid[0.22] == {"recall_ratio": 1.0, "hr@10": 0.0}
    assert grid[0.23] == {"recall_ratio": pytest.approx(4 / 3), "hr@10": 1.0}
    assert grid[0.29]["recall_ratio"] == pytest.approx(2 / 3)
    assert choose_discovery_weight(data, ranker, discovery, grid=(0.3,))["weight"] is None


def test_mixed_with_no_new_candidates_keeps_buy_again() -> None:
    data = ranking_set([[1, 2]], [[1, 2]], [[1]])
    lists = surface_lists(data, [a(1, 2)], [a()])
    for slots in (1, 5):
        assert lists[f"MIXED ({slots} discovery slots)"][0].tolist() == [1, 2]
