"""Stage 8: the list the caller asked for (`RecommendRequest.surface`).

After re-ranking, `BUY_AGAIN` is the ranker's list as before; `DISCOVER` is the discovery
list (candidates the customer never bought, by the discovery model's score, re-ranked by the
same rules); `MIXED` is the ranker's list with some of its items new to the customer
(`feature_service.surfaces.mixed_order`, the blend the offline evaluation measured), ordered
and scored by the ranker: as many as `feature_service.surfaces.discovery_slots_for` finds
worth it from both heads' scores, or `model.reranker.discovery_slots` when no discovery head
answered.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from feature_service.kernels import contained
from feature_service.surfaces import (
    DISCOVERY_WEIGHT,
    Scored,
    Surface,
    discovery_slots_for,
    missing_new_items,
    mixed_order,
)
from gateway.stages.types import Candidates, Ranking

_NONE = Candidates(np.empty(0, np.int32), np.empty(0, np.float32))


def discovery_order(
    candidates: Candidates, discovery_scores: npt.NDArray[np.float32], owned: npt.NDArray[np.int32]
) -> Candidates:
    """The candidates the customer never bought, best `discovery_scores` (aligned with
    `candidates`) first."""
    new = ~contained(candidates.positions, owned)
    positions, scores = candidates.positions[new], discovery_scores[new]
    order = np.argsort(-scores, kind="stable")
    return Candidates(positions[order], scores[order])


def without_owned(ranked: Candidates, owned: npt.NDArray[np.int32]) -> Candidates:
    """`ranked` without the customer's own past items, order kept: the discovery list when no
    discovery model answered (offline, today's ranker masked like this came within noise of
    the discovery model on new products)."""
    return ranked.take(~contained(ranked.positions, owned))


def blend_mixed(
    buy_again: Candidates,
    discover: Candidates,
    ranked: Candidates,
    owned: npt.NDArray[np.int32],
    num_items: int,
    discovery_slots: int,
) -> Candidates:
    """The first `num_items` of the MIXED list (`mixed_order` of the re-ranked `buy_again`
    and `discover` lists), scored and ordered by the ranker's score, which `ranked` (every
    candidate, as the ranker scored it) holds for each of them: scores in one response stay
    comparable, as the API promises, and the blend decides which items are listed, not where
    (recall@10 does not depend on the order within the list)."""
    order = mixed_order(buy_again.positions, discover.positions, owned, num_items, discovery_slots)
    listed = order[:num_items]
    sorter = np.argsort(ranked.positions, kind="stable")
    scores = ranked.scores[sorter[np.searchsorted(ranked.positions, listed, sorter=sorter)]]
    by_score = np.argsort(-scores, kind="stable")
    return Candidates(listed[by_score], scores[by_score])


def surface_list(
    surface: Surface,
    ranking: Ranking,
    owned: npt.NDArray[np.int32],
    num_items: int,
    discovery_slots: int,
    rerank: Callable[[Candidates], Candidates],
    discovery_weight: float = DISCOVERY_WEIGHT,
) -> Candidates:
    """The re-ranked list `surface` asks for (`rerank`: the re-rank stage's rules, cut to
    `num_items`).

    MIXED's discovery slots come from both heads' scores (`discovery_slots_for`, on the
    re-ranked buy-again list and the discovery head's order), `discovery_slots` when no
    discovery head answered. MIXED re-ranks the discovery list only when the re-ranked
    buy-again list lacks new items: otherwise `mixed_order` keeps that list whatever the
    discovery list holds, so the second re-rank pass (the larger part of MIXED's extra cost)
    is skipped with the same result.
    """
    if surface is Surface.DISCOVER:  # the buy-again list plays no part in it
        return rerank(_discovery_candidates(ranking, owned))
    items = rerank(ranking.items)
    if surface is Surface.BUY_AGAIN:
        return items
    if ranking.discover is not None:
        discovery_slots = discovery_slots_for(
            items.positions,
            ranking.discover.positions,
            owned,
            num_items,
            Scored(ranking.items.positions, ranking.items.scores),
            Scored(ranking.discover.positions, ranking.discover.scores),
            discovery_weight,
        )
    discover = _NONE
    if missing_new_items(items.positions, owned, num_items, discovery_slots):
        discover = rerank(_discovery_candidates(ranking, owned))
    return blend_mixed(items, discover, ranking.items, owned, num_items, discovery_slots)


def _discovery_candidates(ranking: Ranking, owned: npt.NDArray[np.int32]) -> Candidates:
    """The discovery head's list, or the ranker's without own items when no head answered."""
    return ranking.discover if ranking.discover is not None else without_owned(ranking.items, owned)
