"""The surface stage: validation of `surface`, the discovery order and the MIXED blend."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import pytest
from recsys.v1 import recommendation_pb2 as pb

from feature_service.surfaces import DISCOVERY_WEIGHT, Surface
from gateway.errors import InvalidArgument
from gateway.stages.blend import blend_mixed, discovery_order, surface_list, without_owned
from gateway.stages.types import Candidates, Ranking
from gateway.stages.validate import validate_recommend
from tests.unit.gateway.test_stages import LIMITS

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)


def a(*values: int) -> npt.NDArray[np.int32]:
    return np.asarray(values, dtype=np.int32)


def c(positions: list[int], scores: list[float]) -> Candidates:
    return Candidates(a(*positions), np.asarray(scores, np.float32))


@pytest.mark.parametrize(
    ("value", "surface"),
    [
        (pb.SURFACE_UNSPECIFIED, Surface.MIXED),  # an old client gets MIXED
        (pb.SURFACE_MIXED, Surface.MIXED),
        (pb.SURFACE_BUY_AGAIN, Surface.BUY_AGAIN),
        (pb.SURFACE_DISCOVER, Surface.DISCOVER),
    ],
)
def test_surface_is_validated(value: int, surface: Surface) -> None:
    request = pb.RecommendRequest(user_id="17850", surface=value)  # type: ignore[arg-type]
    assert validate_recommend(request, LIMITS, NOW).surface is surface


def test_unknown_surface_is_invalid_argument() -> None:
    request = pb.RecommendRequest(user_id="17850")
    request.surface = 7  # type: ignore[assignment]  # what a newer client could send
    with pytest.raises(InvalidArgument, match="surface: unknown Surface value 7"):
        validate_recommend(request, LIMITS, NOW)


def test_discovery_order_skips_owned_and_sorts_by_discovery_score() -> None:
    candidates = c([5, 6, 7, 8], [0.9, 0.8, 0.7, 0.6])
    order = discovery_order(candidates, np.asarray([0.1, 0.5, 0.9, 0.3], np.float32), a(6))
    assert order.positions.tolist() == [7, 8, 5]
    assert order.scores.tolist() == pytest.approx([0.9, 0.3, 0.1])


def test_without_owned_keeps_the_ranker_order() -> None:
    assert without_owned(c([5, 6, 7], [3, 2, 1]), a(6)).positions.tolist() == [5, 7]


def test_mixed_lists_discovery_items_with_the_rankers_scores() -> None:
    ranked = c([1, 2, 3, 7, 8, 9], [0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    buy_again = c([1, 2, 3], [0.9, 0.8, 0.7])
    discover = c([9, 8], [0.6, 0.5])  # the discovery model prefers 9
    mixed = blend_mixed(buy_again, discover, ranked, a(1, 2, 3), 3, 1)
    # 3, the last owned item, gives way to 9; the list is ordered by the ranker's scores.
    assert mixed.positions.tolist() == [1, 2, 9]
    assert mixed.scores.tolist() == pytest.approx([0.9, 0.8, 0.1])


def test_mixed_with_enough_new_items_is_the_ranker_list() -> None:
    ranked = c([7, 1, 2], [0.9, 0.8, 0.7])
    mixed = blend_mixed(c([7, 1], [0.9, 0.8]), c([2], [0.1]), ranked, a(1, 2), 2, 1)
    assert mixed.positions.tolist() == [7, 1]


class _CountingRerank:
    """A re-rank stand-in (the first `n` items) that counts its passes."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.passes = 0

    def __call__(self, items: Candidates) -> Candidates:
        self.passes += 1
        return Candidates(items.positions[: self.n], items.scores[: self.n])


def _ranking(positions: list[int]) -> Ranking:
    """The ranker's list `positions` + [9, 8]; the discovery head prefers 9, then 8."""
    positions = [*positions, 9, 8]
    scores = np.linspace(0.9, 0.1, len(positions)).astype(np.float32)
    discover = c([9, 8], [0.6, 0.5])
    return Ranking(Candidates(a(*positions), scores), "ranker_v2/1", (), discover)


@pytest.mark.parametrize(
    ("positions", "passes", "listed"),
    [
        ([1, 7, 6, 2], 1, [1, 7, 6]),  # 7 and 6 are new: 2 slots filled, the discovery list unused
        ([1, 2, 3, 7], 2, [1, 7, 9]),  # owned items 3, then 2, give way to 7 and 9
    ],
)
def test_mixed_re_ranks_the_discovery_list_only_when_it_is_used(
    positions: list[int], passes: int, listed: list[int]
) -> None:
    # No discovery head: 2 fixed slots, from the ranker's list without owned items.
    owned, ranking = a(1, 2, 3), _ranking(positions)
    no_head = Ranking(ranking.items, "ranker_v2/1", ())
    rerank = _CountingRerank(3)
    mixed = surface_list(Surface.MIXED, no_head, owned, 3, 2, rerank)
    assert rerank.passes == passes
    assert sorted(mixed.positions.tolist()) == sorted(listed)
    # The same list as blending with the discovery list re-ranked in any case.
    always = blend_mixed(
        rerank(ranking.items),
        rerank(without_owned(ranking.items, owned)),
        ranking.items,
        owned,
        3,
        2,
    )
    assert mixed.positions.tolist() == always.positions.tolist()
    assert mixed.scores.tolist() == always.scores.tolist()


@pytest.mark.parametrize(("discovery_9", "listed"), [(0.9, [1, 2, 9]), (0.2, [1, 2, 3])])
def test_mixed_slots_come_from_both_heads_when_the_discovery_head_answered(
    discovery_9: float, listed: list[int]
) -> None:
    # Ranker probabilities sum to 1; owned 3 (0.05) gives way to 9 (0.02) when
    # DISCOVERY_WEIGHT x P(9 sells) outweighs the 0.03 of expected recall given up, whatever
    # the configured fixed slots (0 here).
    assert DISCOVERY_WEIGHT * 0.9 > 0.03 > DISCOVERY_WEIGHT * 0.2
    items = c([1, 2, 3, 9, 8], [0.5, 0.3, 0.05, 0.02, 0.13])
    discover = c([9, 8], [discovery_9, 0.1])
    ranking = Ranking(items, "ranker_v2/1", (), discover)
    mixed = surface_list(Surface.MIXED, ranking, a(1, 2, 3), 3, 0, _CountingRerank(3))
    assert mixed.positions.tolist() == listed


def test_buy_again_and_discover_lists() -> None:
    owned, ranking = a(1, 2, 3), _ranking([1, 2, 3, 7])
    rerank = _CountingRerank(3)
    assert surface_list(Surface.BUY_AGAIN, ranking, owned, 3, 2, rerank).positions.tolist() == [
        1,
        2,
        3,
    ]
    assert rerank.passes == 1
    assert surface_list(Surface.DISCOVER, ranking, owned, 3, 2, rerank).positions.tolist() == [9, 8]
    no_head = Ranking(ranking.items, "ranker_v2/1", ())  # no discovery head: own items masked
    assert surface_list(Surface.DISCOVER, no_head, owned, 3, 2, rerank).positions.tolist() == [
        7,
        9,
        8,
    ]
