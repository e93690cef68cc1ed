"""Embedded feature store: the offline snapshot in process plus a local SQLite event log.

The single-node default (`feature_store.backend: embedded`): no servers, no root. Real-time
features (recent views and purchases) live in memory, are rebuilt from the event log on start,
and are updated as soon as a batch is durable, so a view recorded by RecordEvents is visible to
the very next Recommend call of the same process. Events that sibling processes store in the
same log reach these features through `apply_stored`, fed by `feature_service.event_tail`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from feature_service.catalogue import ItemCatalogue
from feature_service.event_log import SqliteEventLog
from feature_service.events import VIEW_EVENTS, Event, EventType, RecordResult
from feature_service.store import EMPTY_POSITIONS, UserFeatures

USERS_FILE = "users.parquet"

# (timestamp, catalogue position) of one recent activity.
_Activity = tuple[datetime, int]


class EmbeddedFeatureStore:
    """`FeatureStore` backed by process memory and a SQLite event log."""

    def __init__(
        self,
        catalogue: ItemCatalogue,
        known_users: frozenset[str],
        event_log: SqliteEventLog,
        recent_items: int,
        recent_window: timedelta,
    ) -> None:
        self._catalogue = catalogue
        self._known_users = known_users
        self._event_log = event_log
        self._recent_items = recent_items
        self._recent_window = recent_window
        self._views: dict[str, deque[_Activity]] = {}
        self._purchases: dict[str, deque[_Activity]] = {}
        self.replayed_through = 0
        """The event log's feed sequence the start-up replay covered: a tail of the log
        starting here misses nothing and repeats nothing."""

    @classmethod
    async def open(
        cls,
        catalogue: ItemCatalogue,
        data_dir: Path,
        event_log: SqliteEventLog,
        recent_items: int,
        recent_window: timedelta,
        now: datetime,
    ) -> EmbeddedFeatureStore:
        """Loads the known users and replays the recent part of the event log."""
        users = pq.read_table(data_dir / USERS_FILE, columns=["user_id"]).column("user_id")
        store = cls(catalogue, frozenset(users.to_pylist()), event_log, recent_items, recent_window)
        events, store.replayed_through = await event_log.recent(
            now - recent_window, per_user=recent_items * 4
        )
        store._apply(events)
        return store

    async def user_features(self, user_id: str, now: datetime) -> UserFeatures:
        since = now - self._recent_window
        return UserFeatures(
            user_id=user_id,
            known=user_id in self._known_users,
            recent_viewed=_positions_since(self._views.get(user_id), since),
            recent_purchased=_positions_since(self._purchases.get(user_id), since),
        )

    async def record_events(self, events: Sequence[Event]) -> RecordResult:
        # Durable first: the in-memory features only ever reflect stored events.
        result = await self._event_log.append(events)
        self._apply(events)
        return result

    def apply_stored(self, events: Sequence[Event]) -> None:
        """Takes in events another process stored in the shared event log (already durable)."""
        self._apply(events)

    def _apply(self, events: Sequence[Event]) -> None:
        for event in events:
            position = self._catalogue.position.get(event.item_id)
            if position is None:
                continue
            if event.type in VIEW_EVENTS:
                target = self._views
            elif event.type is EventType.PURCHASE:
                target = self._purchases
            else:
                continue
            recent = target.get(event.user_id)
            if recent is None:
                recent = target[event.user_id] = deque(maxlen=self._recent_items)
            recent.append((event.timestamp, position))


def _positions_since(
    recent: deque[_Activity] | None, since: datetime
) -> np.ndarray[tuple[int], np.dtype[np.int32]]:
    if not recent:
        return EMPTY_POSITIONS
    return np.unique(np.fromiter((p for t, p in recent if t >= since), dtype=np.int32))
