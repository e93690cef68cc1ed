"""The ranker's features, defined once for training (offline) and serving (the gateway).

Everything the ranking models see is computed here, by vectorised NumPy functions that the
offline training-set builder (:mod:`triton_models.dataset`) and the online gateway both call, so
there is no training/serving skew by construction. The serving contract is:

1. The gateway keeps, per user, the purchase events it has seen (item, time, quantity, unit
   price; ``RecordEvents`` purchases, ``unit price = revenue / quantity``) and the user's
   country, and turns them into a :class:`UserState` with :func:`build_user_state` (or keeps the
   state up to date incrementally with the same arithmetic).
2. Item features come from :class:`ItemArrays` (``ItemArrays.from_catalogue``), gathered by
   candidate position.
3. A request's :class:`Context` carries its time, device, page and country.
4. :func:`assemble_features` returns the ``float32 [n_candidates, len(FEATURE_NAMES)]`` matrix
   sent to Triton as the ``features`` input, columns in :data:`FEATURE_NAMES` order (stored in
   every model version's ``metadata.json``; the gateway must refuse a model whose list differs).

The per-candidate loops (features, the exact retrieval top-k, the candidate merge) run as
compiled kernels (:mod:`feature_service.kernels`) called from the functions here, so training
and serving share them too; :func:`assemble_features` lists each column's formula, and the
kernel computes it in the same float32/float64 steps as the NumPy code it replaced (tests
compare the two bit for bit).

Times are seconds since the epoch, UTC; a naive ``datetime`` is read as UTC (the data set's
local times are treated the same way offline). Device and page are the API enum numbers; the
historical data has neither, so training rows carry ``UNSPECIFIED`` (0) and the model cannot
yet use them: they are in the vector so that logged serving traffic can train them later
without changing the contract.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from feature_service import kernels
from feature_service.catalogue import ItemCatalogue
from feature_service.categories import top_categories

CATEGORY_NAMES: tuple[str, ...] = top_categories()
"""Top-level categories, in the order of the category one-hot and affinity vectors."""
NUM_DEVICES = 5
"""API ``Device`` values 0..4 (0 = UNSPECIFIED)."""
NUM_PAGES = 7
"""API ``Page`` values 0..6 (0 = UNSPECIFIED)."""
MAX_DAYS = 365.0
"""Recency features are capped here; "never" also reads as this value."""
SECONDS_PER_DAY = 86_400.0
UK_COUNTRIES = frozenset({"united kingdom", "gb", "uk"})
"""Spellings of the home market: the data's country names and ISO 3166-1 alpha-2."""

_USER = (
    "user_log_orders",
    "user_log_distinct_items",
    "user_days_since_last_order",
    "user_mean_log_price",
    "user_is_new",
    "user_country_uk",
)
_ITEM = (
    "item_log_price",
    "item_log_popularity",
    "item_available",
    *(f"item_category_{name.replace(' ', '_')}" for name in CATEGORY_NAMES),
)
_CONTEXT = (
    "context_hour_sin",
    "context_hour_cos",
    "context_weekday_sin",
    "context_weekday_cos",
    *(f"context_device_{value}" for value in range(NUM_DEVICES)),
    *(f"context_page_{value}" for value in range(NUM_PAGES)),
    "context_country_known",
    "context_country_uk",
)
_CROSS = (
    "cross_user_category_affinity",
    "cross_price_vs_user",
    "cross_user_item_log_count",
    "cross_user_item_bought",
    "cross_user_item_days_since",
    "cross_retrieval_score",
)
FEATURE_NAMES: tuple[str, ...] = (*_USER, *_ITEM, *_CONTEXT, *_CROSS)
"""Column order of the feature matrix; stored in model metadata."""
NUM_FEATURES = len(FEATURE_NAMES)

_COLUMN = {name: index for index, name in enumerate(FEATURE_NAMES)}
_USER_START = 0
_ITEM_START = len(_USER)
_CATEGORY_START = _COLUMN[f"item_category_{CATEGORY_NAMES[0].replace(' ', '_')}"]
_CONTEXT_START = _ITEM_START + len(_ITEM)
_DEVICE_START = _COLUMN["context_device_0"]
_PAGE_START = _COLUMN["context_page_0"]
_CROSS_START = _CONTEXT_START + len(_CONTEXT)


def epoch_seconds(moment: datetime) -> float:
    """Seconds since the epoch; a naive ``datetime`` counts as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def is_uk(country: str) -> bool:
    """True for the home market in either spelling ("United Kingdom", "GB")."""
    return country.strip().lower() in UK_COUNTRIES


@dataclass(frozen=True, slots=True)
class ItemArrays:
    """Per-item feature columns, one entry per catalogue position."""

    log_price: npt.NDArray[np.float32]
    """log1p(price in GBP)."""
    log_popularity: npt.NDArray[np.float32]
    """log1p(distinct buyers in the popularity window)."""
    available: npt.NDArray[np.float32]
    """1.0 when the item sold recently (derived availability), else 0.0."""
    category: npt.NDArray[np.int16]
    """Top-level category index into :data:`CATEGORY_NAMES`."""

    def __len__(self) -> int:
        return len(self.category)

    @classmethod
    def from_columns(
        cls,
        price: npt.ArrayLike,
        popularity: npt.ArrayLike,
        available: npt.ArrayLike,
        category: npt.ArrayLike,
    ) -> ItemArrays:
        """Item features from raw columns (price GBP, buyer counts, availability, index)."""
        return cls(
            log_price=np.log1p(np.asarray(price, dtype=np.float64)).astype(np.float32),
            log_popularity=np.log1p(np.asarray(popularity, dtype=np.float64)).astype(np.float32),
            available=np.asarray(available, dtype=bool).astype(np.float32),
            category=np.asarray(category, dtype=np.int16),
        )

    @classmethod
    def from_catalogue(cls, catalogue: ItemCatalogue) -> ItemArrays:
        """Item features of the serving catalogue (``build/data/items.parquet``)."""
        return cls.from_columns(
            catalogue.price, catalogue.popularity, catalogue.available, catalogue.category
        )


@dataclass(frozen=True, slots=True)
class PurchaseHistory:
    """A user's purchase lines as arrays (lines of items not in the catalogue dropped)."""

    positions: npt.NDArray[np.int32]
    """Catalogue position of each line's item."""
    timestamps: npt.NDArray[np.float64]
    """Seconds since the epoch (UTC). Lines at the same second form one order."""
    quantities: npt.NDArray[np.float32]
    unit_prices: npt.NDArray[np.float32]
    """GBP per unit (``revenue / quantity`` for API events)."""

    @classmethod
    def empty(cls) -> PurchaseHistory:
        """No purchases (a new user)."""
        return cls(
            np.empty(0, np.int32),
            np.empty(0, np.float64),
            np.empty(0, np.float32),
            np.empty(0, np.float32),
        )


@dataclass(frozen=True, slots=True)
class UserState:
    """What the ranker knows about a user: aggregates of their purchases before ``as_of``."""

    item_positions: npt.NDArray[np.int32]
    """Items bought, sorted ascending (unique)."""
    item_counts: npt.NDArray[np.float32]
    """Orders that contained each item (aligned with ``item_positions``)."""
    item_log_counts: npt.NDArray[np.float32]
    """``log1p(item_counts)``, the ``cross_user_item_log_count`` value of each item."""
    item_last_purchase: npt.NDArray[np.float64]
    """Time (epoch s) each item was last bought."""
    category_affinity: npt.NDArray[np.float32]
    """Share of the user's purchase lines per top category (sums to 1; zeros when new)."""
    mean_log_price: float
    """Mean log1p(unit price paid) over purchase lines; 0 when new."""
    order_count: int
    """Distinct orders (distinct purchase times)."""
    last_order: float
    """Time (epoch s) of the latest order; NaN when new."""
    country: str
    """Country as known for the user (either spelling); empty when unknown."""


def build_user_state(
    history: PurchaseHistory, items: ItemArrays, as_of: float | datetime, country: str = ""
) -> UserState:
    """Aggregates the user's purchases strictly before ``as_of`` into a :class:`UserState`."""
    cutoff = epoch_seconds(as_of) if isinstance(as_of, datetime) else float(as_of)
    keep = history.timestamps < cutoff
    positions = history.positions[keep]
    times = history.timestamps[keep]
    if len(positions) == 0:
        return UserState(
            item_positions=np.empty(0, np.int32),
            item_counts=np.empty(0, np.float32),
            item_log_counts=np.empty(0, np.float32),
            item_last_purchase=np.empty(0, np.float64),
            category_affinity=np.zeros(len(CATEGORY_NAMES), np.float32),
            mean_log_price=0.0,
            order_count=0,
            last_order=float("nan"),
            country=country,
        )
    # One count per (item, order): a line repeated within an order is one purchase of it.
    pairs = np.unique(np.stack([positions.astype(np.float64), times]), axis=1)
    unique_items, counts = np.unique(pairs[0].astype(np.int32), return_counts=True)
    last = np.full(len(unique_items), -np.inf)
    np.maximum.at(last, np.searchsorted(unique_items, positions), times)
    categories = items.category[positions]
    affinity = np.bincount(categories, minlength=len(CATEGORY_NAMES)).astype(np.float32)
    affinity /= affinity.sum()
    prices = history.unit_prices[keep].astype(np.float64)
    item_counts = counts.astype(np.float32)
    return UserState(
        item_positions=unique_items.astype(np.int32),
        item_counts=item_counts,
        item_log_counts=np.log1p(item_counts),
        item_last_purchase=last,
        category_affinity=affinity,
        mean_log_price=float(np.log1p(prices).mean()),
        order_count=len(np.unique(times)),
        last_order=float(times.max()),
        country=country,
    )


@dataclass(frozen=True, slots=True)
class Context:
    """Where and when the recommendations are shown."""

    time: datetime
    """Request time (client time when given); at training time the purchase time."""
    device: int = 0
    """API ``Device`` number (0..4); 0 in all training data."""
    page: int = 0
    """API ``Page`` number (0..6); 0 in all training data."""
    country: str = ""
    """Request country (either spelling); empty when unknown."""


def _days(now: float, then: npt.NDArray[np.float64] | float) -> npt.NDArray[np.float64]:
    days = (now - np.asarray(then, dtype=np.float64)) / SECONDS_PER_DAY
    return np.where(np.isfinite(days), np.clip(days, 0.0, MAX_DAYS), MAX_DAYS)


def _days_since(now: float, then: float) -> float:
    """`_days` of one time, in plain float arithmetic (the same IEEE operations, without the
    ~10 us of NumPy calls on a scalar that every request paid)."""
    days = (now - then) / SECONDS_PER_DAY
    return min(max(days, 0.0), MAX_DAYS) if math.isfinite(days) else MAX_DAYS


def _shared_row(state: UserState, context: Context) -> npt.NDArray[np.float32]:
    """The user and context columns, which are the same for every candidate."""
    row = np.zeros(NUM_FEATURES, dtype=np.float32)
    now = epoch_seconds(context.time)
    row[_USER_START : _USER_START + len(_USER)] = (
        np.log1p(state.order_count),
        np.log1p(len(state.item_positions)),
        _days_since(now, state.last_order),
        state.mean_log_price,
        float(state.order_count == 0),
        float(is_uk(state.country)),
    )
    utc = context.time if context.time.tzinfo is None else context.time.astimezone(UTC)
    hour = 2.0 * np.pi * (utc.hour + utc.minute / 60.0) / 24.0
    weekday = 2.0 * np.pi * utc.weekday() / 7.0
    row[_COLUMN["context_hour_sin"]] = np.sin(hour)
    row[_COLUMN["context_hour_cos"]] = np.cos(hour)
    row[_COLUMN["context_weekday_sin"]] = np.sin(weekday)
    row[_COLUMN["context_weekday_cos"]] = np.cos(weekday)
    device = context.device if 0 <= context.device < NUM_DEVICES else 0
    page = context.page if 0 <= context.page < NUM_PAGES else 0
    row[_DEVICE_START + device] = 1.0
    row[_PAGE_START + page] = 1.0
    row[_COLUMN["context_country_known"]] = float(bool(context.country.strip()))
    row[_COLUMN["context_country_uk"]] = float(is_uk(context.country))
    return row


def assemble_features(
    state: UserState,
    items: ItemArrays,
    candidates: npt.NDArray[np.int32],
    context: Context,
    retrieval_scores: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    """The feature matrix of one request: ``float32 [len(candidates), NUM_FEATURES]``.

    Args:
        state: the user's state (from :func:`build_user_state`).
        items: item feature columns by catalogue position.
        candidates: catalogue positions to score.
        context: request time, device, page and country.
        retrieval_scores: the retrieval model's score of each candidate (user embedding · item
            embedding; 0 for a user without an embedding), aligned with ``candidates``.

    Returns:
        Rows in ``candidates`` order, columns in :data:`FEATURE_NAMES` order.
    """
    n = len(candidates)
    if len(retrieval_scores) != n:
        raise ValueError(f"{n} candidates but {len(retrieval_scores)} retrieval scores")
    out = np.empty((n, NUM_FEATURES), dtype=np.float32)
    # Per candidate (kernels.fill_features, in these steps and precisions):
    #   user and context columns: the shared row;
    #   item_*: log_price, log_popularity, available and the category one-hot of the item;
    #   cross_user_category_affinity: category_affinity[item category];
    #   cross_price_vs_user: log_price - float32(mean_log_price), 0 for a new user;
    #   cross_user_item_log_count: item_log_counts of a bought item, else 0 (= log1p(0));
    #   cross_user_item_bought: 1 for an item in item_positions, else 0;
    #   cross_user_item_days_since: _days(now, last purchase of the item, -inf if never);
    #   cross_retrieval_score: the retrieval score.
    kernels.fill_features(
        out,
        _shared_row(state, context),
        items.log_price,
        items.log_popularity,
        items.available,
        items.category,
        np.asarray(candidates, dtype=np.int32),
        state.item_positions,
        state.item_log_counts,
        state.item_last_purchase,
        state.category_affinity,
        np.float32(state.mean_log_price),
        epoch_seconds(context.time),
        np.asarray(retrieval_scores, dtype=np.float32),
        _ITEM_START,
        _CATEGORY_START,
        _CROSS_START,
        SECONDS_PER_DAY,
        MAX_DAYS,
    )
    return out


def merge_candidates(*sources: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    """Union of candidate sources, first occurrence wins, in source order.

    The ranker was trained on ``merge_candidates(retrieval, history, popular)``: the retrieval
    top-N (the user's own items excluded), the items the user bought before, and the most
    popular items.
    """
    if not sources:
        return np.empty(0, np.int32)
    stacked = np.concatenate([np.asarray(s, dtype=np.int32) for s in sources])
    merged: npt.NDArray[np.int32] = kernels.first_occurrences(stacked)
    return merged


def top_k_exact(
    user_vectors: npt.NDArray[np.float32],
    item_vectors: npt.NDArray[np.float32],
    k: int,
    exclude: Sequence[npt.NDArray[np.int32]] | None = None,
) -> npt.NDArray[np.int32]:
    """Exact top-``k`` items by inner product per user, best first, ``exclude[i]`` left out.

    The retrieval source of the ranker's training candidates; the gateway searches the same way
    when the catalogue is small enough (`model.candidate_generator.exact_search_max_items`).
    Equal scores are ordered by item position; excluded items come last (scored -inf) only
    when fewer than ``k`` others remain.
    """
    scores = np.asarray(user_vectors @ item_vectors.T)
    if scores.dtype != np.float64:
        scores = scores.astype(np.float32, copy=False)
    rows = scores.shape[0]
    if exclude is None:
        flat = np.empty(0, np.int32)
        offsets = np.zeros(rows + 1, np.int64)
    else:
        if len(exclude) != rows:
            raise ValueError(f"{rows} users but {len(exclude)} exclusion lists")
        parts = [np.asarray(positions, dtype=np.int32) for positions in exclude]
        if rows == 1:  # the gateway's one user: no concatenation or running sum to build
            flat = np.ascontiguousarray(parts[0])
            offsets = np.array([0, len(flat)], np.int64)
        else:
            flat = np.concatenate(parts) if parts else np.empty(0, np.int32)
            offsets = np.zeros(rows + 1, np.int64)
            np.cumsum([len(p) for p in parts], out=offsets[1:])
    top: npt.NDArray[np.int32] = kernels.top_k_rows(scores, k, flat, offsets)
    return top
