"""The held-out artefacts `benchmarks/surfaces_api.py` serves from: nothing on or after the
test period's start, the served catalogue's items at their positions with their state as of
the cut, and the retrieval embeddings of the offline test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.surfaces_api import heldout_artifacts, positions_of
from feature_service.catalogue import ItemCatalogue
from tests.conftest import DATA_DIR
from triton_models.dataset import RankingSet, item_snapshot, load_data


@pytest.fixture(scope="module")
def heldout(build_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.Timestamp]:
    # `make test` builds the models first: the datasets and retrieval are there.
    out = tmp_path_factory.mktemp("heldout")
    return out, heldout_artifacts(build_dir, DATA_DIR, out)


def test_nothing_from_the_test_period_is_served(
    build_dir: Path, heldout: tuple[Path, pd.Timestamp]
) -> None:
    out, cut = heldout
    data = load_data(build_dir / "data", DATA_DIR)
    assert cut == data.split.test_start
    events = pd.read_parquet(out / "data" / "events.parquet")
    full = pd.read_parquet(build_dir / "data" / "events.parquet")
    assert events["timestamp"].max() < cut
    assert len(events) == (full["timestamp"] < cut).sum()
    assert pd.read_parquet(out / "data" / "returns.parquet")["timestamp"].max() < cut


def test_catalogue_keeps_positions_with_its_state_at_the_cut(
    build_dir: Path, heldout: tuple[Path, pd.Timestamp]
) -> None:
    out, cut = heldout
    served = ItemCatalogue.load(build_dir / "data")
    then = ItemCatalogue.load(out / "data")
    np.testing.assert_array_equal(then.item_ids, served.item_ids)
    snapshot = item_snapshot(load_data(build_dir / "data", DATA_DIR), cut)
    np.testing.assert_array_equal(then.popularity, snapshot.popularity)
    items = pd.read_parquet(out / "data" / "items.parquet")
    np.testing.assert_array_equal(
        items["available"].to_numpy(np.float32), snapshot.arrays.available
    )


def test_retrieval_knows_exactly_the_customers_who_bought_before(
    build_dir: Path, heldout: tuple[Path, pd.Timestamp]
) -> None:
    out, _ = heldout
    test = RankingSet.load(build_dir / "datasets" / "test.npz")
    users = set((out / "retrieval" / "user_ids.txt").read_text().split())
    returning = {u for u, past in zip(test.user_ids, test.history, strict=True) if len(past)}
    assert returning <= users
    assert not (set(test.user_ids) - returning) & users  # first purchase in the test period
    assert (out / "triton" / "local").resolve() == (build_dir / "triton" / "local").resolve()


def test_positions_of_maps_item_ids() -> None:
    lists = positions_of([["b", "a"], []], ["a", "b", "c"])
    assert [p.tolist() for p in lists] == [[1, 0], []]
