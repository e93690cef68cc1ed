"""Plain records passed between the store levels (L1 process, L2 Redis, L3 Postgres).

A user's real-time state is three short activity lists (views incl. clicks, carts, purchases;
newest first, item ids with event times) plus per-type counters.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

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
