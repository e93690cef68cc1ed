"""The MIXED blend against hand-worked lists."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from feature_service.surfaces import (
    Scored,
    Surface,
    discovery_slots_for,
    missing_new_items,
    mixed_order,
)


def a(*values: int) -> npt.NDArray[np.int32]:
    return np.asarray(values, dtype=np.int32)


def test_surface_numbers_match_the_api() -> None:
    assert [(s.name, int(s)) for s in Surface] == [("BUY_AGAIN", 1), ("DISCOVER", 2), ("MIXED", 3)]


def test_owned_items_at_the_bottom_give_way_to_discovery() -> None:
    # Owned 1..4; the ranker's top 4 holds one new item (9). Two slots wanted: the lowest
    # owned item of the top 4 (3) gives way to the best discovery item not listed (7).
    order = mixed_order(a(1, 9, 2, 3, 4, 8), a(9, 7, 6), a(1, 2, 3, 4), 4, 2)
    assert order.tolist() == [1, 9, 2, 7, 3, 4, 8]
    assert order.dtype == np.int32


def test_enough_new_items_already_leaves_the_list_alone() -> None:
    buy_again = a(9, 1, 8, 2)
    assert mixed_order(buy_again, a(7, 6), a(1, 2), 4, 2) is buy_again
    assert mixed_order(buy_again, a(7, 6), a(1, 2), 4, 0) is buy_again


def test_picks_are_not_repeated_further_down() -> None:
    # 6 is a discovery pick and also in the ranker's tail: it appears once.
    order = mixed_order(a(1, 2, 3, 6, 5), a(6, 5), a(1, 2, 3), 3, 2)
    assert order.tolist() == [1, 6, 5, 2, 3]
    assert len(set(order.tolist())) == len(order)


def test_short_list_takes_new_items_without_dropping_owned_ones() -> None:
    order = mixed_order(a(1, 2), a(7, 8, 9), a(1, 2), 5, 2)
    assert order.tolist() == [1, 2, 7, 8]


def test_no_discovery_candidates_keeps_the_ranker_order() -> None:
    buy_again = a(1, 2, 3)
    assert mixed_order(buy_again, a(), a(1, 2, 3), 3, 2) is buy_again


def test_missing_new_items_is_zero_exactly_when_mixed_keeps_the_ranker_order() -> None:
    owned = np.asarray([1, 2, 3, 4], np.int32)
    discover = np.asarray([8, 9], np.int32)
    for buy_again, slots, missing in (
        ([1, 2, 5, 6, 7], 3, 0),  # 5, 6, 7 are new already
        ([1, 2, 3, 5, 6], 3, 1),
        ([1, 2, 3, 4, 5], 3, 2),
        ([1, 2], 3, 3),  # a short list: every slot is still missing
    ):
        ranked = np.asarray(buy_again, np.int32)
        assert missing_new_items(ranked, owned, 5, slots) == missing
        unchanged = np.array_equal(mixed_order(ranked, discover, owned, 5, slots), ranked)
        assert unchanged == (missing == 0)


def _scored(probabilities: dict[int, float]) -> Scored:
    return Scored(a(*probabilities), np.asarray(list(probabilities.values()), np.float32))


def test_discovery_slots_weigh_expected_recall_against_a_new_product_hit() -> None:
    # All three listed items are owned; the ranker's probabilities sum to 1 over the candidates.
    # k picks: 0 -> 0.9; 1 (3 gives way to 7) -> 0.85 + w * 0.5; 2 (2 and 3 give way to 7
    # and 8) -> 0.6 + w * (1 - 0.5 * 0.8).
    ranker = _scored({1: 0.5, 2: 0.3, 3: 0.1, 7: 0.05, 8: 0.05})
    discovery = _scored({7: 0.5, 8: 0.2})
    for weight, slots in ((0.05, 0), (0.11, 1), (2.0, 1), (3.0, 2)):
        chosen = discovery_slots_for(a(1, 2, 3), a(7, 8), a(1, 2, 3), 3, ranker, discovery, weight)
        assert chosen == slots


def test_discovery_slots_count_the_new_items_already_listed() -> None:
    # 9 is new and listed: with no pick worth making, MIXED keeps the list (1 slot, filled).
    ranker = _scored({1: 0.6, 9: 0.3, 2: 0.1, 7: 0.0})
    discovery = _scored({9: 0.2, 7: 0.01})
    slots = discovery_slots_for(a(1, 9, 2), a(7, 9), a(1, 2), 3, ranker, discovery, 0.11)
    assert slots == 1
    assert missing_new_items(a(1, 9, 2), a(1, 2), 3, slots) == 0


def test_discovery_slots_are_the_best_mixed_list_by_brute_force() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        n_items, num_items = int(rng.integers(3, 16)), int(rng.integers(1, 11))
        buy_again = rng.permutation(n_items).astype(np.int32)
        n_owned = int(rng.integers(0, n_items + 1))
        owned = rng.choice(n_items, n_owned, replace=False).astype(np.int32)
        discover = rng.permutation(np.setdiff1d(buy_again, owned)).astype(np.int32)
        ranker = Scored(buy_again, rng.random(n_items).astype(np.float32) * 0.3)
        discovery = Scored(discover, rng.random(len(discover)).astype(np.float32) * 0.5)
        weight = float(rng.choice([0.0, 0.11, 0.5, 3.0]))
        p_ranker = dict(zip(ranker.positions.tolist(), ranker.scores.tolist(), strict=True))
        p_new = dict(zip(discovery.positions.tolist(), discovery.scores.tolist(), strict=True))
        values = []
        for slots in range(num_items + 1):
            listed = mixed_order(buy_again, discover, owned, num_items, slots)[:num_items]
            no_hit = np.prod([1 - p_new[i] for i in listed.tolist() if i in p_new])
            expected = sum(p_ranker[i] for i in listed.tolist()) / sum(p_ranker.values())
            values.append((expected + weight * (1 - no_hit), listed.tolist()))
        slots = discovery_slots_for(
            buy_again, discover, owned, num_items, ranker, discovery, weight
        )
        listed = mixed_order(buy_again, discover, owned, num_items, slots)[:num_items].tolist()
        best = max(v for v, _ in values)
        assert next(v for v, lst in values if lst == listed) == pytest.approx(best, abs=1e-9)
