"""The gateway's nearest-item search on the real build: exact search for small catalogues,
Annoy above `exact_search_max_items`, and both return (nearly) the same candidates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from feature_service.catalogue import ItemCatalogue
from gateway.config import Settings
from gateway.resources import open_resources
from gateway.stages.candidates import RetrievalIndex

pytestmark = pytest.mark.integration

COUNT = 500


def _load(models: Path, build_dir: Path, exact_search_max_items: int) -> RetrievalIndex:
    catalogue = ItemCatalogue.load(build_dir / "data")
    return RetrievalIndex.load(build_dir / "retrieval", catalogue, -1, exact_search_max_items)


def test_small_catalogue_is_searched_exactly(models: Path, build_dir: Path) -> None:
    index = _load(models, build_dir, exact_search_max_items=50_000)
    assert index.index is None  # the Annoy file is not even opened
    user = next(iter(index.user_row))
    vector = index.user_vectors[index.user_row[user]]
    exclude = np.argsort(-(index.item_vectors @ vector))[:5].astype(np.int32)  # the 5 best

    found, returned_vector = index.nearest(user, COUNT, exclude)

    np.testing.assert_array_equal(returned_vector, vector)
    assert len(found) == COUNT and len(np.unique(found)) == COUNT
    assert not np.isin(found, exclude).any()
    scores = index.item_vectors[found] @ vector
    assert np.all(np.diff(scores) <= 0)  # best first
    others = np.setdiff1d(np.arange(len(index.item_vectors)), np.concatenate([found, exclude]))
    assert scores[-1] >= (index.item_vectors[others] @ vector).max()  # nothing better left out


def test_large_catalogue_setting_uses_annoy_with_the_same_candidates(
    models: Path, build_dir: Path
) -> None:
    exact = _load(models, build_dir, exact_search_max_items=50_000)
    annoy = _load(models, build_dir, exact_search_max_items=0)
    assert annoy.index is not None
    users = list(exact.user_row)[:: max(1, len(exact.user_row) // 50)][:50]
    empty = np.empty(0, np.int32)
    overlaps = [
        len(np.intersect1d(exact.nearest(u, COUNT, empty)[0], annoy.nearest(u, COUNT, empty)[0]))
        / COUNT
        for u in users
    ]
    # `make models` picks the search_k whose overlap with exact search reaches 0.97.
    assert np.mean(overlaps) >= 0.95


def test_unknown_user_gets_no_nearest_items(models: Path, build_dir: Path) -> None:
    for limit in (0, 50_000):
        found, vector = _load(models, build_dir, limit).nearest(
            "no-such-user", COUNT, np.empty(0, np.int32)
        )
        assert len(found) == 0 and not vector.any()


async def test_gateway_runs_blas_on_one_thread(
    models: Path, make_settings: Callable[..., Settings]
) -> None:
    # A second BLAS thread only waits for a core that Triton or another request holds.
    async with open_resources(make_settings()) as resources:
        assert resources.recommender.candidates.index is not None
        blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas and all(pool["num_threads"] == 1 for pool in blas)
