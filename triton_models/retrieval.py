"""Step 2 of the offline pipeline: ALS embeddings, the Annoy index, and retrieval recall.

Embeddings come from ``implicit``'s ALS on a user x item matrix whose entries are
``sum over purchase lines of log1p(quantity) * 0.5 ** (age_days / HALF_LIFE_DAYS)``: quantity
counts with diminishing returns, and recent lines count more (the data is seasonal; a
60-day half-life beat no decay on validation recall). Items are indexed by their position in
``build/data/items.parquet``; users by their position in the sorted user id list.

Retrieval recall (the definition used everywhere in this project): for each user who buys in
the evaluation period *and* bought something before it, the relevant set is the items bought
in the period that the user had **not** bought before it (discovery; repeat purchases are the
job of the history candidate source, which the ranker always receives). A method returns K
items, the user's past items excluded; recall@K is ``|relevant ∩ returned| / |relevant|``,
averaged over users.

Annoy's metric is ``dot`` (ALS scores are inner products). ``n_trees`` and ``search_k`` are
picked by measuring the overlap of Annoy's top-K with the exact top-K over a grid, taking the
cheapest setting (query time) whose overlap reaches ``target_overlap``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp
from annoy import AnnoyIndex

from feature_service.definitions import top_k_exact

_log = logging.getLogger(__name__)

HALF_LIFE_DAYS = 60.0
METRIC: Literal["dot"] = "dot"


@dataclass(frozen=True)
class AlsParams:
    """ALS hyper-parameters (chosen on validation recall, see the module docstring)."""

    factors: int = 32
    regularization: float = 20.0
    alpha: float = 5.0
    iterations: int = 15
    half_life_days: float = HALF_LIFE_DAYS
    seed: int = 0
    threads: int = 2


@dataclass(frozen=True)
class Embeddings:
    """User and item factors of one ALS fit."""

    user_ids: npt.NDArray[np.object_]
    """Sorted user ids; row i of ``users`` belongs to ``user_ids[i]``."""
    users: npt.NDArray[np.float32]
    items: npt.NDArray[np.float32]
    """Row i belongs to the item at position i of items.parquet."""

    def user_rows(self, user_ids: Sequence[str]) -> npt.NDArray[np.intp]:
        """Row of each user id, -1 for users without an embedding."""
        index = np.searchsorted(self.user_ids, np.asarray(user_ids, dtype=object))
        index = np.minimum(index, len(self.user_ids) - 1)
        found = self.user_ids[index] == np.asarray(user_ids, dtype=object)
        return np.where(found, index, -1).astype(np.intp)

    def user_vectors(self, user_ids: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embedding of each user; zeros for unknown users."""
        rows = self.user_rows(user_ids)
        vectors = np.zeros((len(rows), self.users.shape[1]), dtype=np.float32)
        vectors[rows >= 0] = self.users[rows[rows >= 0]]
        return vectors


def interaction_matrix(
    events: pd.DataFrame,
    user_ids: npt.NDArray[np.object_],
    num_items: int,
    as_of: pd.Timestamp,
    half_life_days: float = HALF_LIFE_DAYS,
) -> sp.csr_matrix:
    """Users x items confidence matrix from purchase lines before ``as_of``.

    ``events`` needs columns user_id, position (item position), quantity, timestamp.
    """
    lines = events.loc[events["timestamp"] < as_of]
    rows = np.searchsorted(user_ids, lines["user_id"].to_numpy(dtype=object))
    age_days = (as_of - lines["timestamp"]).dt.total_seconds().to_numpy() / 86_400.0
    weight = np.log1p(lines["quantity"].to_numpy(dtype=np.float64)) * 0.5 ** (
        age_days / half_life_days
    )
    matrix = sp.csr_matrix(
        (weight, (rows, lines["position"].to_numpy())), shape=(len(user_ids), num_items)
    )
    matrix.sum_duplicates()
    return matrix.astype(np.float32)


def fit_als(
    events: pd.DataFrame, num_items: int, as_of: pd.Timestamp, params: AlsParams
) -> Embeddings:
    """ALS embeddings from purchases before ``as_of`` (users with no such purchase omitted)."""
    import threadpoolctl
    from implicit.cpu.als import AlternatingLeastSquares

    before = events.loc[events["timestamp"] < as_of]
    user_ids = np.asarray(np.sort(before["user_id"].unique()), dtype=object)
    matrix = interaction_matrix(before, user_ids, num_items, as_of, params.half_life_days)
    # implicit's own threads do the work; a BLAS thread pool underneath only slows them down
    # (and implicit warns about it when the model is created).
    with threadpoolctl.threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=params.alpha,
            iterations=params.iterations,
            random_state=params.seed,
            num_threads=params.threads,
        )
        model.fit(matrix, show_progress=False)
    return Embeddings(
        user_ids=user_ids,
        users=np.ascontiguousarray(model.user_factors, dtype=np.float32),
        items=np.ascontiguousarray(model.item_factors, dtype=np.float32),
    )


def top_k_popular(
    popularity: npt.NDArray[Any], k: int, exclude: Sequence[npt.NDArray[np.int32]]
) -> list[npt.NDArray[np.int32]]:
    """The ``k`` most popular items per user, the user's own items left out."""
    order = np.argsort(-np.asarray(popularity, dtype=np.float64), kind="stable").astype(np.int32)
    result = []
    for positions in exclude:
        keep = order[~np.isin(order, positions)]
        result.append(keep[:k])
    return result


def build_annoy(items: npt.NDArray[np.float32], n_trees: int, seed: int = 0) -> AnnoyIndex:
    """An Annoy index (metric ``dot``) whose item i is catalogue position i."""
    index = AnnoyIndex(items.shape[1], METRIC)
    index.set_seed(seed)
    for position, vector in enumerate(items):
        index.add_item(position, vector.tolist())
    index.build(n_trees, n_jobs=1)
    return index


def annoy_top_k(
    index: AnnoyIndex,
    user_vectors: npt.NDArray[np.float32],
    k: int,
    search_k: int,
    exclude: Sequence[npt.NDArray[np.int32]] | None = None,
) -> list[npt.NDArray[np.int32]]:
    """Annoy's top-``k`` per user; asks for ``k + len(exclude[i])`` then drops excluded."""
    result = []
    for row, vector in enumerate(user_vectors):
        skip = exclude[row] if exclude is not None else np.empty(0, np.int32)
        found = np.asarray(
            index.get_nns_by_vector(vector.tolist(), k + len(skip), search_k=search_k),
            dtype=np.int32,
        )
        result.append(found[~np.isin(found, skip)][:k])
    return result


def recall_at_k(
    retrieved: Sequence[npt.NDArray[np.int32]], relevant: Sequence[npt.NDArray[np.int32]], k: int
) -> float:
    """Mean over users with a non-empty relevant set of ``|relevant ∩ retrieved[:k]| / |rel|``."""
    values = [
        len(np.intersect1d(found[:k], rel)) / len(rel)
        for found, rel in zip(retrieved, relevant, strict=True)
        if len(rel)
    ]
    return float(np.mean(values)) if values else 0.0


@dataclass(frozen=True)
class AnnoyChoice:
    """The measured grid and the setting picked from it."""

    n_trees: int
    search_k: int
    overlap: float
    """Mean overlap of Annoy's top-K with the exact top-K at the chosen setting."""
    query_ms: float
    grid: list[dict[str, float]]


def choose_annoy(
    items: npt.NDArray[np.float32],
    user_vectors: npt.NDArray[np.float32],
    k: int = 500,
    target_overlap: float = 0.97,
    trees: Sequence[int] = (10, 25, 50),
    search_multipliers: Sequence[int] = (1, 2, 4, 8),
    seed: int = 0,
) -> AnnoyChoice:
    """Measures Annoy's top-``k`` overlap with exact search over a grid; picks the fastest
    setting that reaches ``target_overlap`` (or the most accurate one when none does).

    ``search_k`` is ``multiplier * n_trees * k`` (Annoy's default is ``n_trees * k``).
    """
    k = min(k, len(items))
    exact = top_k_exact(user_vectors, items, k)
    grid: list[dict[str, float]] = []
    for n_trees in trees:
        index = build_annoy(items, n_trees, seed)
        for multiplier in search_multipliers:
            search_k = multiplier * n_trees * k
            start = time.perf_counter()
            found = annoy_top_k(index, user_vectors, k, search_k)
            elapsed = (time.perf_counter() - start) / max(len(user_vectors), 1) * 1e3
            overlap = float(
                np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(found, exact, strict=True)])
            )
            grid.append(
                {"n_trees": n_trees, "search_k": search_k, "overlap": overlap, "query_ms": elapsed}
            )
        index.unload()
    good = [g for g in grid if g["overlap"] >= target_overlap]
    best = min(good, key=lambda g: g["query_ms"]) if good else max(grid, key=lambda g: g["overlap"])
    return AnnoyChoice(
        n_trees=int(best["n_trees"]),
        search_k=int(best["search_k"]),
        overlap=best["overlap"],
        query_ms=best["query_ms"],
        grid=grid,
    )


def write_embeddings(
    embeddings: Embeddings, index: AnnoyIndex, item_ids: Sequence[str], out_dir: Path
) -> None:
    """Writes ``items.ann``, ``item_ids.txt``, ``item_embeddings.npy``, ``user_embeddings.npy``
    and ``user_ids.txt``; line i of an id file names row i (Annoy item i) of its array."""
    out_dir.mkdir(parents=True, exist_ok=True)
    index.save(str(out_dir / "items.ann"))
    (out_dir / "item_ids.txt").write_text("\n".join(item_ids) + "\n")
    np.save(out_dir / "item_embeddings.npy", embeddings.items)
    np.save(out_dir / "user_embeddings.npy", embeddings.users)
    (out_dir / "user_ids.txt").write_text("\n".join(embeddings.user_ids.tolist()) + "\n")
