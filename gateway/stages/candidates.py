"""Stage 4: retrieve candidate items for the user.

The candidate set is the one the rankers were trained on
(`feature_service.definitions.merge_candidates`): the Annoy index's nearest items to the user's
embedding (their own past items excluded), the items the user bought before (most recent first),
and the most popular items, which also give new and unknown users a full list (cold start).
Each candidate's retrieval score is the user-item inner product (0 without an embedding).

Small catalogues (up to `model.candidate_generator.exact_search_max_items`) are searched
exactly: every item's inner product with the user, the search the ranker's training candidates
came from, and at that size faster than Annoy (0.1 ms against 1.8 ms for this data's 3,862
items, `python -m benchmarks.pipeline_bench`). Larger catalogues use Annoy, whose index file is
memory-mapped, so every gateway process on a machine shares one copy. Without a retrieval index
(`make models` not run yet), candidates are the popular items.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from annoy import AnnoyIndex
from cachetools import LRUCache

from feature_service.catalogue import ItemCatalogue
from feature_service.definitions import merge_candidates, top_k_exact
from feature_service.kernels import contained
from gateway.stages.types import Candidates

HISTORY_CANDIDATES = 200
"""Past items per user in the candidate set (as in training)."""


class RetrievalError(Exception):
    """The retrieval artefacts are missing or do not match the catalogue."""


class PopularCandidates:
    """The catalogue's items ordered by recent popularity; scores are popularity in [0, 1]."""

    def __init__(self, catalogue: ItemCatalogue) -> None:
        order = np.argsort(-catalogue.popularity, kind="stable").astype(np.int32)
        top = float(catalogue.popularity[order[0]]) if len(order) else 1.0
        self._ranked = Candidates(order, (catalogue.popularity[order] / max(top, 1.0)))

    @property
    def positions(self) -> npt.NDArray[np.int32]:
        """All catalogue positions, most popular first."""
        return self._ranked.positions

    def retrieve(self, count: int) -> Candidates:
        """The `count` most popular items."""
        return self._ranked.take(np.arange(min(count, len(self._ranked))))


@dataclass(frozen=True, eq=False)
class RetrievalIndex:
    """Nearest-item search over item embeddings, and the user embeddings, by catalogue position."""

    index: Any | None
    """AnnoyIndex (metric dot), item i = catalogue position i, memory-mapped; None when the
    catalogue is small enough to search exactly."""
    search_k: int
    user_row: dict[str, int]
    user_vectors: npt.NDArray[np.float32]
    item_vectors: npt.NDArray[np.float32]
    unit_item_vectors: npt.NDArray[np.float32]
    """Item embeddings scaled to unit length (for diversity)."""

    @classmethod
    def load(
        cls,
        directory: Path,
        catalogue: ItemCatalogue,
        search_k: int,
        exact_search_max_items: int,
    ) -> RetrievalIndex:
        """Opens `directory` (build/retrieval) written by `make models`; Annoy only when the
        catalogue has more than `exact_search_max_items` items.

        Raises:
            RetrievalError: a file is missing or the item order differs from the catalogue.
        """
        import json

        try:
            meta = json.loads((directory / "metadata.json").read_text())
            item_ids = (directory / "item_ids.txt").read_text().split()
            user_ids = (directory / "user_ids.txt").read_text().split()
            items = np.load(directory / "item_embeddings.npy").astype(np.float32)
            users = np.load(directory / "user_embeddings.npy").astype(np.float32)
        except (OSError, ValueError) as exc:
            raise RetrievalError(f"cannot read the retrieval index in {directory}: {exc}") from exc
        if item_ids != catalogue.item_ids.tolist():
            raise RetrievalError(
                f"{directory}/item_ids.txt does not match the catalogue order: "
                "rebuild with `make models`"
            )
        index = None
        if len(item_ids) > exact_search_max_items:
            index = AnnoyIndex(int(meta["dim"]), meta["metric"])
            index.load(str(directory / "items.ann"))  # mmap: shared by every process on the host
        norms = np.linalg.norm(items, axis=1, keepdims=True)
        return cls(
            index=index,
            search_k=search_k if search_k > 0 else int(meta["search_k"]),
            user_row={user: i for i, user in enumerate(user_ids)},
            user_vectors=users,
            item_vectors=items,
            unit_item_vectors=items / np.maximum(norms, 1e-12),
        )

    def nearest(
        self, user_id: str, count: int, exclude: npt.NDArray[np.int32]
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
        """The `count` items with the largest inner product with the user (excluded items
        dropped), best first, and the user's vector (zeros when the user has no embedding, with
        no items)."""
        row = self.user_row.get(user_id)
        if row is None:
            return np.empty(0, np.int32), np.zeros(self.user_vectors.shape[1], np.float32)
        vector = self.user_vectors[row]
        if self.index is None:
            return top_k_exact(vector[None, :], self.item_vectors, count, [exclude])[0], vector
        found = np.asarray(
            self.index.get_nns_by_vector(
                vector.tolist(), count + len(exclude), search_k=self.search_k
            ),
            dtype=np.int32,
        )
        return found[~contained(found, exclude)][:count], vector


class CandidateRetriever:
    """Merges retrieval, the user's past items and popular items into one candidate set.

    With `cache_size`, the candidates of the most recent users are kept: they are a function of
    the user's embedding (fixed while the process runs), their past items and the count, all of
    which are in the key, so a cached set is exact and a purchase makes a new key (the state
    changes on events, not per call). The search is the largest part of the stage (about
    0.1-0.25 ms of 2 ms per Recommend, `benchmarks/results/serving-cost-*.md`).
    """

    def __init__(
        self,
        popular: PopularCandidates,
        index: RetrievalIndex | None,
        popular_count: int,
        cache_size: int = 0,
    ) -> None:
        self._popular = popular
        self._index = index
        self._popular_count = popular_count
        self._recent: LRUCache[tuple[str, int, bytes], Candidates] | None = (
            LRUCache(maxsize=cache_size) if cache_size > 0 and index is not None else None
        )

    @property
    def index(self) -> RetrievalIndex | None:
        """The retrieval index, when one is deployed."""
        return self._index

    def retrieve_cached(
        self, user_id: str, past_items: npt.NDArray[np.int32], count: int
    ) -> tuple[Candidates, bool]:
        """`retrieve`, from the cache when this user was served with the same past items and
        count; the flag says whether it was."""
        if self._recent is None:
            return self.retrieve(user_id, past_items, count), False
        key = (user_id, count, past_items[:HISTORY_CANDIDATES].tobytes())
        found = self._recent.get(key)
        if found is not None:
            return found, True
        found = self.retrieve(user_id, past_items, count)
        # Shared by later requests: no stage may change it in place.
        found.positions.setflags(write=False)
        found.scores.setflags(write=False)
        self._recent[key] = found
        return found, False

    def retrieve(self, user_id: str, past_items: npt.NDArray[np.int32], count: int) -> Candidates:
        """Candidates for the user: `count` from retrieval (or popularity without an index),
        their past items, and the popular items; scores are retrieval scores."""
        if self._index is None:
            return self._popular.retrieve(count)
        nearest, vector = self._index.nearest(user_id, count, past_items)
        positions = merge_candidates(
            nearest, past_items[:HISTORY_CANDIDATES], self._popular.positions[: self._popular_count]
        )
        scores = self._index.item_vectors[positions] @ vector
        return Candidates(positions, scores.astype(np.float32))


def candidate_count(configured: int, num_items: int, blocked: int) -> int:
    """How many candidates to fetch so that `num_items` survive filtering of `blocked` items."""
    return max(configured, num_items + blocked)
