"""The discovery objective: products new to the customer, as a model of its own.

The rankers learn "bought in the label window" over every candidate, the customer's own past
items included; on this data re-orders dominate, so their lists are mostly what the customer
bought before. Masking those items out of a ranker's list at serving time would kill re-order
recall wherever it is applied, so discovery is a separate objective instead: its training
rows are only the candidates the customer never bought (retrieval and popular items, own
items excluded), and its targets only purchases of products new to the customer.

A discovery model takes the same feature matrix as the rankers (the serving feature code),
so it is exported, quantized and served on Triton exactly like them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from feature_service.definitions import FEATURE_NAMES
from triton_models.dataset import RankingSet
from triton_models.rankers import RankerKind
from triton_models.ranking_quality import rank_by_score

DISCOVERY_MODELS: dict[str, RankerKind] = {"discovery_v1": "mlp"}
"""Served discovery model name -> architecture. The MLP was kept by measurement: on the test
period a DCN-v2 trained the same way reached recall@10 0.0491 on new products against the
MLP's 0.0494, at 2.8x the training time."""

_BOUGHT = FEATURE_NAMES.index("cross_user_item_bought")


def _per_query(
    mask: npt.NDArray[np.bool_], offsets: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """How many rows of each query ``mask`` selects."""
    cumulative = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    counts: npt.NDArray[np.int64] = cumulative[offsets[1:]] - cumulative[offsets[:-1]]
    return counts


def owned_rows(data: RankingSet) -> npt.NDArray[np.bool_]:
    """Per row, whether the candidate is one of the user's own past items (the feature the
    serving code computes from the purchase history)."""
    owned: npt.NDArray[np.bool_] = data.features[:, _BOUGHT] > 0
    return owned


def new_items_only(data: RankingSet) -> RankingSet:
    """The rows of candidates the user never bought, with each query's relevant set cut to
    the products new to the user: the discovery model's training and validation data."""
    keep = ~owned_rows(data)
    sizes = _per_query(keep, data.offsets)
    return RankingSet(
        user_ids=data.user_ids,
        offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        positions=data.positions[keep],
        features=data.features[keep],
        labels=data.labels[keep],
        relevant=[
            np.setdiff1d(rel, past).astype(np.int32)
            for rel, past in zip(data.relevant, data.history, strict=True)
        ],
        history=data.history,
        user_vectors=data.user_vectors,
    )


def discovery_lists(
    data: RankingSet, scores: npt.NDArray[np.float32]
) -> list[npt.NDArray[np.int32]]:
    """Per query, the candidates the user never bought, best ``scores`` first (the DISCOVER
    list of a model scoring every row)."""
    masked = np.where(owned_rows(data), -np.inf, scores.astype(np.float64))
    ranked = rank_by_score(data.positions, masked, data.offsets)
    new_counts = _per_query(~owned_rows(data), data.offsets)
    return [order[: int(n)] for order, n in zip(ranked, new_counts, strict=True)]
