"""Users' purchase histories in process: the offline snapshot plus purchases recorded since.

The ranker's user and cross features (`feature_service.definitions`) are built from a user's
purchase lines. The snapshot (`build/data/events.parquet`) is held as columns sorted by user,
so one user's history is a slice; purchases recorded through RecordEvents are appended to a
small per-user overlay.

What derives from a user's lines alone (the merged arrays, the distinct items newest first) is
computed once and kept (`UserPurchases`, an LRU of `cache_size` users) until that user's next
recorded purchase replaces it, so a Recommend call reads it instead of rebuilding it. `record`
may be called from any thread.

Replaying a historical data set: with `time_offset_s` > 0 every time is moved back by that
many seconds before it enters a feature, so the data's last day reads as "today" (the offset is
whole weeks, keeping hour of day and weekday). Production serves live data with offset 0.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
from cachetools import LRUCache

from feature_service.catalogue import ItemCatalogue
from feature_service.definitions import PurchaseHistory
from feature_service.events import Event, EventType

EVENTS_FILE = "events.parquet"
USERS_FILE = "users.parquet"
WEEK = timedelta(days=7)


def replay_offset(data_end: datetime, now: datetime) -> timedelta:
    """Whole weeks between the data's end and `now` (zero when the data is current)."""
    if now <= data_end:
        return timedelta(0)
    return WEEK * math.ceil((now - data_end) / WEEK)


@dataclass(frozen=True, slots=True)
class UserPurchases:
    """A user's purchase lines and what derives from them alone."""

    history: PurchaseHistory
    """Every known line, snapshot then recorded."""
    recent_items: npt.NDArray[np.int32]
    """Distinct items bought, most recently bought first (`PurchaseHistories.recent_items`)."""


NO_PURCHASES = UserPurchases(PurchaseHistory.empty(), np.empty(0, np.int32))
"""A user without purchase lines."""


class PurchaseHistories:
    """Per-user purchase lines: snapshot columns plus a recorded overlay."""

    def __init__(
        self,
        user_ids: npt.NDArray[np.object_],
        offsets: npt.NDArray[np.int64],
        positions: npt.NDArray[np.int32],
        timestamps: npt.NDArray[np.float64],
        quantities: npt.NDArray[np.float32],
        unit_prices: npt.NDArray[np.float32],
        countries: dict[str, str],
        catalogue: ItemCatalogue,
        time_offset_s: float,
        cache_size: int = 100_000,
    ) -> None:
        self._row = {user: i for i, user in enumerate(user_ids.tolist())}
        self._offsets = offsets
        self._positions = positions
        self._timestamps = timestamps
        self._quantities = quantities
        self._unit_prices = unit_prices
        self._countries = countries
        self._catalogue = catalogue
        self.time_offset_s = time_offset_s
        """Seconds subtracted from live times before they meet the data's timeline."""
        self._recorded: dict[str, list[tuple[int, float, float, float]]] = defaultdict(list)
        self._recorded_ids: set[str] = set()
        self._purchases: LRUCache[str, UserPurchases] = LRUCache(maxsize=cache_size)
        # Guards the overlay and the cache: `record` may run on another thread than Recommend.
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, data_dir: Path, catalogue: ItemCatalogue, time_offset_s: float
    ) -> PurchaseHistories:
        """Loads the snapshot written by the offline pipeline (`make models`)."""
        table = pq.read_table(
            data_dir / EVENTS_FILE,
            columns=["user_id", "item_id", "timestamp", "quantity", "unit_price"],
        ).to_pandas()
        table["position"] = table["item_id"].map(catalogue.position)
        table = table.dropna(subset=["position"]).sort_values(
            ["user_id", "timestamp"], kind="stable"
        )
        users, starts = np.unique(table["user_id"].to_numpy(dtype=object), return_index=True)
        offsets = np.append(starts, len(table)).astype(np.int64)
        seconds = table["timestamp"].to_numpy("datetime64[us]").astype(np.int64) / 1e6
        people = pq.read_table(data_dir / USERS_FILE, columns=["user_id", "country"])
        countries = dict(
            zip(
                people.column("user_id").to_pylist(),
                people.column("country").to_pylist(),
                strict=True,
            )
        )
        return cls(
            users,
            offsets,
            table["position"].to_numpy(np.int32),
            seconds.astype(np.float64),
            table["quantity"].to_numpy(np.float32),
            table["unit_price"].to_numpy(np.float32),
            countries,
            catalogue,
            time_offset_s,
        )

    def country(self, user_id: str) -> str:
        """The user's country in the data (empty when unknown)."""
        return self._countries.get(user_id, "")

    def history(self, user_id: str) -> PurchaseHistory:
        """All known purchase lines of the user, oldest first."""
        return self.purchases(user_id).history

    def purchases(self, user_id: str) -> UserPurchases:
        """The user's lines and distinct recent items, computed once per recorded purchase."""
        with self._lock:
            cached = self._purchases.get(user_id)
            if cached is None:
                cached = self._purchases[user_id] = self._compute(user_id)
            return cached

    def _compute(self, user_id: str) -> UserPurchases:
        row = self._row.get(user_id)
        recorded = self._recorded.get(user_id)
        if row is None and not recorded:
            return NO_PURCHASES
        if row is None:
            parts = PurchaseHistory.empty()
        else:
            a, b = self._offsets[row], self._offsets[row + 1]
            parts = PurchaseHistory(
                self._positions[a:b],
                self._timestamps[a:b],
                self._quantities[a:b],
                self._unit_prices[a:b],
            )
        if recorded:
            extra = np.asarray(recorded, dtype=np.float64)
            parts = PurchaseHistory(
                np.concatenate([parts.positions, extra[:, 0].astype(np.int32)]),
                np.concatenate([parts.timestamps, extra[:, 1]]),
                np.concatenate([parts.quantities, extra[:, 2].astype(np.float32)]),
                np.concatenate([parts.unit_prices, extra[:, 3].astype(np.float32)]),
            )
        return UserPurchases(parts, self.recent_items(parts, len(parts.positions)))

    @staticmethod
    def recent_items(history: PurchaseHistory, limit: int) -> npt.NDArray[np.int32]:
        """Distinct items bought, most recently bought first, at most `limit`."""
        if len(history.positions) == 0:
            return np.empty(0, np.int32)
        newest_first = history.positions[np.argsort(-history.timestamps, kind="stable")]
        _, first = np.unique(newest_first, return_index=True)
        recent: npt.NDArray[np.int32] = newest_first[np.sort(first)][:limit]
        return recent

    def record(self, events: list[Event]) -> None:
        """Adds recorded purchases once each by event id (a replayed batch adds nothing; items
        outside the catalogue are skipped); the users' derived state is recomputed on their
        next read."""
        with self._lock:
            for event in events:
                if event.type is not EventType.PURCHASE or event.event_id in self._recorded_ids:
                    continue
                self._recorded_ids.add(event.event_id)
                position = self._catalogue.position.get(event.item_id)
                if position is None:
                    continue
                quantity = max(event.quantity, 1)
                self._recorded[event.user_id].append(
                    (
                        position,
                        event.timestamp.timestamp() - self.time_offset_s,
                        float(quantity),
                        event.revenue / quantity,
                    )
                )
                self._purchases.pop(event.user_id, None)
