"""Step 3 of the offline pipeline: ranking data sets built with the serving feature code.

A *period* ``[start, end)`` yields one query per user who buys in it. The query happens at the
user's first purchase in the period (so the user's state, built from purchases strictly before
that moment, never sees the period's own purchases), its context is that order's time and
country, and its label for each candidate is "bought in ``[first purchase, end)``".

Candidates are what the gateway would retrieve at that moment, from models fitted only on data
before ``start``: ``merge_candidates(retrieval top-N (own items excluded), the user's past
items (most recent first, capped), the most popular items)``. Item features come from a
catalogue snapshot built by the ingest code itself from raw lines before ``start``
(:func:`item_snapshot`), so popularity and availability are those the gateway would have served
then. Features are :func:`feature_service.definitions.assemble_features`, the serving function.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from feature_service.definitions import (
    CATEGORY_NAMES,
    Context,
    ItemArrays,
    PurchaseHistory,
    assemble_features,
    build_user_state,
    merge_candidates,
    top_k_exact,
)
from triton_models import ingest
from triton_models.retrieval import Embeddings


@dataclass(frozen=True)
class CandidateParams:
    """How many candidates each source contributes."""

    retrieval: int = 200
    history: int = 200
    popular: int = 50


@dataclass(frozen=True)
class Split:
    """The time split written by ingest."""

    data_start: pd.Timestamp
    validation_start: pd.Timestamp
    test_start: pd.Timestamp
    data_end: pd.Timestamp


@dataclass(frozen=True)
class Data:
    """Canonical tables as the later steps read them."""

    events: pd.DataFrame
    """Purchase lines with ``position`` (catalogue position of the item), sorted by time."""
    items: pd.DataFrame
    """items.parquet (the serving catalogue as of ``data_end``)."""
    split: Split
    data_dir: Path
    """The raw data folder (for catalogue snapshots)."""


def load_data(tables_dir: Path, data_dir: Path, sample: int | None = None) -> Data:
    """Reads build/data; with ``sample``, keeps the events of the first N customers by id."""
    report = json.loads((tables_dir / "ingest_report.json").read_text())
    split = Split(**{key: pd.Timestamp(value) for key, value in report["split"].items()})
    items = pd.read_parquet(tables_dir / "items.parquet")
    events = pd.read_parquet(tables_dir / "events.parquet")
    if sample is not None:
        keep = np.sort(events["user_id"].unique())[:sample]
        events = events.loc[events["user_id"].isin(keep)]
    position = pd.Series(np.arange(len(items), dtype=np.int32), index=items["item_id"])
    events = events.assign(position=events["item_id"].map(position))
    events = events.dropna(subset=["position"]).astype({"position": np.int32})
    events = events.sort_values(["timestamp", "invoice"], kind="stable", ignore_index=True)
    return Data(events=events, items=items, split=split, data_dir=data_dir)


def category_index(items: pd.DataFrame) -> npt.NDArray[np.int16]:
    """Top-category index of each item (the catalogue's encoding)."""
    index = {name: i for i, name in enumerate(CATEGORY_NAMES)}
    return np.asarray(items["category"].map(index).to_numpy(), dtype=np.int16)


@dataclass(frozen=True)
class ItemSnapshot:
    """Item features and popularity as the gateway would have served them at ``as_of``."""

    arrays: ItemArrays
    popularity: npt.NDArray[np.float32]


def item_snapshot(data: Data, as_of: pd.Timestamp) -> ItemSnapshot:
    """The catalogue as of ``as_of``, aligned with items.parquet positions.

    At ``data_end`` this is items.parquet itself. Earlier, ingest's own code rebuilds the
    catalogue from raw lines before ``as_of`` (anonymous lines included, as in serving); items
    not sold yet get popularity 0, unavailable, and their final price. Categories are always
    the final ones (an item's identity).
    """
    items = data.items
    category = category_index(items)
    if as_of >= data.split.data_end:
        price = items["price"].to_numpy(np.float64)
        popularity = items["popularity"].to_numpy(np.float64)
        available = items["available"].to_numpy(bool)
    else:
        then = tables_as_of(data, as_of).items
        price = then["price"].to_numpy(np.float64)
        popularity = then["popularity"].to_numpy(np.float64)
        available = then["available"].to_numpy(bool)
    return ItemSnapshot(
        arrays=ItemArrays.from_columns(price, popularity, available, category),
        popularity=popularity.astype(np.float32),
    )


def tables_as_of(data: Data, as_of: pd.Timestamp) -> ingest.Tables:
    """Ingest's tables from the raw lines before ``as_of``, the catalogue on items.parquet's
    items and positions: an item not sold yet gets popularity 0, unavailable, and its final
    title, price and last sale; categories are always the final ones (an item's identity).

    Raises:
        ValueError: the raw lines before ``as_of`` end earlier (ingest's popularity window
            would shift).
    """
    raw = ingest.read_raw(data.data_dir)
    tables = ingest.build_tables(raw.loc[raw["InvoiceDate"] < as_of.strftime("%Y-%m-%d %H:%M:%S")])
    if pd.Timestamp(tables.split.data_end) != as_of:
        raise ValueError(
            f"snapshot at {as_of}: the raw data before it ends on "
            f"{tables.split.data_end}, so ingest's popularity window would shift"
        )
    served = data.items.set_index("item_id")
    then = tables.items.set_index("item_id").reindex(served.index)
    for column in ("title", "price", "last_sold"):
        then[column] = then[column].fillna(served[column])
    then["popularity"] = then["popularity"].fillna(0).astype(np.int64)
    then["available"] = then["available"].astype("boolean").fillna(False).astype(bool)
    then["category"] = served["category"]
    then["subcategory"] = served["subcategory"]
    return replace(tables, items=then[served.columns].reset_index())


def history_of(lines: pd.DataFrame) -> PurchaseHistory:
    """A user's purchase lines as :class:`PurchaseHistory` arrays."""
    stamps = lines["timestamp"].to_numpy().astype("datetime64[us]").astype(np.int64) / 1e6
    return PurchaseHistory(
        positions=lines["position"].to_numpy(np.int32),
        timestamps=stamps.astype(np.float64),
        quantities=lines["quantity"].to_numpy(np.float32),
        unit_prices=lines["unit_price"].to_numpy(np.float32),
    )


@dataclass(frozen=True)
class RankingSet:
    """Queries with their candidates, features and labels; query q owns rows
    ``offsets[q]:offsets[q+1]``."""

    user_ids: list[str]
    offsets: npt.NDArray[np.int64]
    positions: npt.NDArray[np.int32]
    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.float32]
    relevant: list[npt.NDArray[np.int32]]
    """All items each user bought in the label window (in the candidates or not)."""
    history: list[npt.NDArray[np.int32]]
    """Items each user bought before the query (most recent first)."""
    user_vectors: npt.NDArray[np.float32]
    """Retrieval embedding of each user (zeros for users without one)."""

    def __len__(self) -> int:
        return len(self.user_ids)

    def subset(self, queries: npt.NDArray[np.intp]) -> RankingSet:
        """The given queries only."""
        rows = np.concatenate(
            [np.arange(self.offsets[q], self.offsets[q + 1]) for q in queries]
            or [np.empty(0, np.int64)]
        )
        sizes = np.diff(self.offsets)[queries]
        return RankingSet(
            user_ids=[self.user_ids[q] for q in queries],
            offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            positions=self.positions[rows],
            features=self.features[rows],
            labels=self.labels[rows],
            relevant=[self.relevant[q] for q in queries],
            history=[self.history[q] for q in queries],
            user_vectors=self.user_vectors[queries],
        )

    @staticmethod
    def concat(parts: list[RankingSet]) -> RankingSet:
        """Queries of all parts, in order."""
        offsets = [np.zeros(1, np.int64)]
        base = 0
        for part in parts:
            offsets.append(part.offsets[1:] + base)
            base += int(part.offsets[-1])
        return RankingSet(
            user_ids=[u for p in parts for u in p.user_ids],
            offsets=np.concatenate(offsets),
            positions=np.concatenate([p.positions for p in parts]),
            features=np.concatenate([p.features for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            relevant=[r for p in parts for r in p.relevant],
            history=[h for p in parts for h in p.history],
            user_vectors=np.concatenate([p.user_vectors for p in parts]),
        )

    def save(self, path: Path) -> None:
        """One ``.npz`` file (ragged lists flattened with offsets)."""

        def ragged(values: list[npt.NDArray[np.int32]]) -> dict[str, Any]:
            return {
                "data": np.concatenate(values or [np.empty(0, np.int32)]).astype(np.int32),
                "offsets": np.concatenate([[0], np.cumsum([len(v) for v in values])]),
            }

        rel, hist = ragged(self.relevant), ragged(self.history)
        np.savez(
            path,
            user_ids=np.asarray(self.user_ids, dtype=str),
            offsets=self.offsets,
            positions=self.positions,
            features=self.features,
            labels=self.labels,
            relevant=rel["data"],
            relevant_offsets=rel["offsets"],
            history=hist["data"],
            history_offsets=hist["offsets"],
            user_vectors=self.user_vectors,
        )

    @classmethod
    def load(cls, path: Path) -> RankingSet:
        """Reads what :meth:`save` wrote."""
        with np.load(path) as z:

            def unragged(name: str) -> list[npt.NDArray[np.int32]]:
                data, offsets = z[name], z[f"{name}_offsets"]
                return [data[a:b] for a, b in itertools.pairwise(offsets)]

            return cls(
                user_ids=[str(u) for u in z["user_ids"]],
                offsets=z["offsets"],
                positions=z["positions"],
                features=z["features"],
                labels=z["labels"],
                relevant=unragged("relevant"),
                history=unragged("history"),
                user_vectors=z["user_vectors"],
            )


def build_ranking_set(
    data: Data,
    start: pd.Timestamp,
    end: pd.Timestamp,
    embeddings: Embeddings,
    snapshot: ItemSnapshot,
    params: CandidateParams = CandidateParams(),  # noqa: B008 (frozen dataclass)
) -> RankingSet:
    """One query per user buying in ``[start, end)`` (see the module docstring)."""
    events = data.events
    window = events.loc[(events["timestamp"] >= start) & (events["timestamp"] < end)]
    before = events.loc[events["timestamp"] < start]
    firsts = window.groupby("user_id", sort=True).head(1).set_index("user_id")
    user_ids = firsts.index.tolist()
    past = dict(iter(before.groupby("user_id", sort=False)))
    bought = dict(iter(window.groupby("user_id", sort=False)))
    popular = np.argsort(-snapshot.popularity, kind="stable").astype(np.int32)[: params.popular]
    vectors = embeddings.user_vectors(user_ids)

    histories: list[PurchaseHistory] = []
    recent_items: list[npt.NDArray[np.int32]] = []
    for user in user_ids:
        lines = past.get(user)
        if lines is None:
            histories.append(PurchaseHistory.empty())
            recent_items.append(np.empty(0, np.int32))
            continue
        histories.append(history_of(lines))
        # Most recent first: the last occurrence of each item in time order.
        reversed_positions = lines["position"].to_numpy(np.int32)[::-1]
        _, first = np.unique(reversed_positions, return_index=True)
        recent_items.append(reversed_positions[np.sort(first)])
    retrieved = top_k_exact(vectors, embeddings.items, params.retrieval, exclude=recent_items)

    offsets = [0]
    positions, features, labels, relevant = [], [], [], []
    for q, user in enumerate(user_ids):
        first = firsts.loc[user]
        context = Context(time=first["timestamp"].to_pydatetime(), country=first["country"])
        country = str(past[user]["country"].iloc[-1]) if user in past else ""
        state = build_user_state(histories[q], snapshot.arrays, context.time, country)
        own = vectors[q]
        from_retrieval = retrieved[q] if own.any() else np.empty(0, np.int32)
        candidates = merge_candidates(from_retrieval, recent_items[q][: params.history], popular)
        scores = embeddings.items[candidates] @ own
        features.append(assemble_features(state, snapshot.arrays, candidates, context, scores))
        items_bought = np.unique(bought[user]["position"].to_numpy(np.int32))
        relevant.append(items_bought)
        labels.append(np.isin(candidates, items_bought).astype(np.float32))
        positions.append(candidates)
        offsets.append(offsets[-1] + len(candidates))
    width = features[0].shape[1] if features else 0
    return RankingSet(
        user_ids=user_ids,
        offsets=np.asarray(offsets, dtype=np.int64),
        positions=np.concatenate(positions or [np.empty(0, np.int32)]),
        features=np.concatenate(features or [np.empty((0, width), np.float32)]),
        labels=np.concatenate(labels or [np.empty(0, np.float32)]),
        relevant=relevant,
        history=recent_items,
        user_vectors=vectors,
    )
