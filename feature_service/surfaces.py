"""Which list a caller asks for, and how the MIXED list blends the other two.

Shared by the offline evaluation (which measures each surface on the test period) and the
gateway (which serves them), so the list that was measured is the list that is served.

- ``BUY_AGAIN``: the ranker's order (today's list; this data's customers re-order a lot, so it
  is mostly their own past items);
- ``DISCOVER``: the discovery model's order of the candidates the customer never bought;
- ``MIXED``: the ranker's order with some of the first ``num_items`` new to the customer (see
  :func:`mixed_order`): per customer as many as :func:`discovery_slots_for` finds worth it
  from both heads' probabilities, or a fixed ``discovery_slots`` when no discovery head
  answered.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from feature_service import kernels
from feature_service.kernels import contained

Positions = npt.NDArray[np.int32]

DEFAULT_DISCOVERY_SLOTS = 3
"""MIXED's discovery slots out of 10 when no discovery head answered (otherwise
:func:`discovery_slots_for` decides per customer). On the test period each fixed slot trades
re-order recall for discovery (build/reports/evaluation.md measures 1 to 5): 3 keeps overall
recall@10 at about 0.9x today's list and reaches a new product for about a third of the
customers who bought one."""

DISCOVERY_WEIGHT = 0.08
"""MIXED's price of a new product, in expected recall: :func:`discovery_slots_for` gives up
that share of the customer's expected re-order and purchase hits for a certain new-product hit.
Each `make models` chooses it again on the rankers' validation queries (never the test period):
the weight with the most customers reached on new products while overall recall@10 stays
within 5% of the ranker's list (build/reports/evaluation.md, "MIXED's discovery weight"), and
the gateway serves that choice (`gateway.resources.served_discovery_weight`). This value, the
choice for the shipped data and models, stands in where no report names one."""


class Scored(NamedTuple):
    """Items a model head scored and its probability for each (aligned, any order, each item
    once)."""

    positions: Positions
    scores: npt.NDArray[np.float32]


class Surface(enum.IntEnum):
    """The list a caller wants, numbered as the API's ``Surface`` enum (whose 0,
    ``SURFACE_UNSPECIFIED``, is served as MIXED: an old client gets MIXED)."""

    BUY_AGAIN = 1
    DISCOVER = 2
    MIXED = 3


def missing_new_items(
    buy_again: Positions, owned: Positions, num_items: int, discovery_slots: int
) -> int:
    """How many of the first ``num_items`` of ``buy_again`` must still give way to new items
    for MIXED (0: none, and :func:`mixed_order` keeps ``buy_again`` whatever ``discover``
    holds, so a caller can skip building it)."""
    head = buy_again[:num_items]
    return max(0, min(discovery_slots, num_items) - int((~contained(head, owned)).sum()))


def mixed_order(
    buy_again: Positions,
    discover: Positions,
    owned: Positions,
    num_items: int,
    discovery_slots: int,
) -> Positions:
    """The MIXED order: ``buy_again`` with at least ``discovery_slots`` of its first
    ``num_items`` new to the customer.

    When the first ``num_items`` of ``buy_again`` already hold that many items outside
    ``owned``, it is returned unchanged. Otherwise the lowest-ranked owned items among them
    give way to the best ``discover`` items not listed there yet, placed after the kept ones;
    the rest of ``buy_again`` follows (so a later cut or filter can still fill the list).

    Args:
        buy_again: every candidate, ranker order, best first.
        discover: candidates new to the customer, discovery order, best first.
        owned: the customer's past items (any order).
        num_items: the length of the list that will be shown.
        discovery_slots: how many of its slots at least go to new items.
    """
    head = buy_again[:num_items]
    is_owned = contained(head, owned)
    need = min(discovery_slots, num_items) - int((~is_owned).sum())
    if need <= 0 or len(discover) == 0:
        return buy_again
    owned_at = np.flatnonzero(is_owned)
    room = num_items - len(head)  # a short list takes new items without giving any up
    picks = discover[~contained(discover, head)][: min(need, room + len(owned_at))]
    # The last owned items of the head give way; everything else keeps its order.
    drop = owned_at[len(owned_at) - max(0, len(picks) - room) :]
    kept = np.delete(head, drop)
    rest = buy_again[num_items:]
    tail = np.concatenate([head[drop], rest[~contained(rest, picks)]])
    order: Positions = np.concatenate([kept, picks, tail]).astype(np.int32)
    return order


def discovery_slots_for(
    buy_again: Positions,
    discover: Positions,
    owned: Positions,
    num_items: int,
    ranker: Scored,
    discovery: Scored,
    weight: float = DISCOVERY_WEIGHT,
) -> int:
    """How many of one customer's first ``num_items`` MIXED gives to new products.

    Each possible :func:`mixed_order` list (0, 1, 2... discovery picks) is valued at the
    ranker's probabilities summed over its items, as a share of their sum over every
    candidate (the customer's expected purchases: the list's expected recall), plus
    ``weight`` x the probability, by the discovery head and taking the new items as
    independent, that the customer buys at least one of the list's new items. The best value
    wins (the fewest picks on a tie). A customer whose re-orders are near-certain keeps
    them; one whose discovery picks are likely to sell gets several.

    Args:
        buy_again: every candidate, ranker order, best first.
        discover: candidates new to the customer, discovery order, best first.
        owned: the customer's past items (any order).
        num_items: the length of the list that will be shown.
        ranker: every candidate with the ranker head's probability.
        discovery: the new candidates with the discovery head's probability.
        weight: the value of a certain new-product hit (:data:`DISCOVERY_WEIGHT`).

    Returns:
        The ``discovery_slots`` to give :func:`mixed_order` for this customer.
    """
    head = buy_again[:num_items]
    is_owned = contained(head, owned)
    n_owned = int(is_owned.sum())
    room = num_items - len(head)
    # At most len(head) of the discovery list are listed already, so its first
    # room + n_owned + len(head) items hold every pick.
    first = discover[: room + n_owned + len(head)]
    picks = first[~contained(first, head)][: room + n_owned]
    total = float(ranker.scores.sum(dtype=np.float64))
    best = kernels.best_discovery_picks(
        np.ascontiguousarray(head, np.int32),
        is_owned,
        np.ascontiguousarray(picks, np.int32),
        np.ascontiguousarray(ranker.positions, np.int32),
        np.ascontiguousarray(ranker.scores, np.float32),
        np.ascontiguousarray(discovery.positions, np.int32),
        np.ascontiguousarray(discovery.scores, np.float32),
        room,
        total if total > 0 else 1.0,
        weight,
    )
    return len(head) - n_owned + int(best)
