"""The MIXED blend against hand-worked lists."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from feature_service.surfaces import Surface, missing_new_items, mixed_order


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
