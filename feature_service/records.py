"""Plain records passed between the store levels (L1 process, L2 Redis, L3 Postgres).

A user's real-time state is three short activity lists (views incl. clicks, carts, purchases;
newest first, item ids with event times) plus per-type counters; item rows are fixed-size
binary records (`ITEM_DTYPE`) so a request's 500 candidates decode with one `np.frombuffer`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from feature_service.events import EventType


class Activity(enum.Enum):
    """The activity lists kept per user; the value is the Redis key suffix."""

    VIEW = "v"
    CART = "c"
    PURCHASE = "p"


ACTIVITY_OF: dict[EventType, Activity] = {
    EventType.CLICK: Activity.VIEW,
    EventType.PRODUCT_VIEW: Activity.VIEW,
    EventType.ADD_TO_CART: Activity.CART,
    EventType.PURCHASE: Activity.PURCHASE,
}
"""Which list an event type goes to; impressions go to none."""

ACTIVITY_TYPES: dict[Activity, tuple[EventType, ...]] = {
    activity: tuple(t for t, a in ACTIVITY_OF.items() if a is activity) for activity in Activity
}


def counter_field(event_type: EventType) -> str:
    """The counter (hash field) of one event type, e.g. `n:purchase`."""
    return f"n:{event_type.name.lower()}"


REVENUE_FIELD = "revenue"
"""Counter of purchase revenue recorded through the event stream."""

# (event time in seconds since the epoch, item id), newest first.
ActivityEntry = tuple[float, str]


@dataclass(frozen=True, slots=True)
class UserState:
    """Everything the online store keeps about one user."""

    user_id: str
    known: bool
    """The user is in the offline snapshot (has purchase history)."""
    recent: dict[Activity, list[ActivityEntry]] = field(default_factory=dict)
    """Newest first, at most `feature_store.recent_items` per activity."""
    counters: dict[str, float] = field(default_factory=dict)
    """Event counts by type (`counter_field`) and `REVENUE_FIELD`, over all stored events."""


ITEM_DTYPE = np.dtype(
    [("price", "<f8"), ("popularity", "<f4"), ("category", "<i2"), ("available", "u1")]
)
"""Packed (15 bytes) binary form of one item row; category is an index into the catalogue's
`category_names`, -1 when unknown."""


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """One item row of the offline snapshot as Postgres returns it."""

    item_id: str
    price: float
    popularity: float
    category: str
    available: bool


@dataclass(frozen=True, slots=True)
class ItemRows:
    """Item features of a request's candidates, in the order asked for."""

    positions: npt.NDArray[np.int32]
    price: npt.NDArray[np.float64]
    popularity: npt.NDArray[np.float32]
    category: npt.NDArray[np.int16]
    """Index into the catalogue's `category_names`, -1 when unknown."""
    available: npt.NDArray[np.bool_]
    found: npt.NDArray[np.bool_]
    """False where the store has no row for the item (the other columns hold zeros)."""

    @classmethod
    def from_packed(
        cls,
        positions: npt.NDArray[np.int32],
        packed: npt.NDArray[np.void],
        found: npt.NDArray[np.bool_],
    ) -> ItemRows:
        """Columns of a packed `ITEM_DTYPE` array."""
        return cls(
            positions=positions,
            price=packed["price"].astype(np.float64),
            popularity=packed["popularity"].astype(np.float32),
            category=packed["category"].astype(np.int16),
            available=packed["available"].astype(np.bool_),
            found=found,
        )
