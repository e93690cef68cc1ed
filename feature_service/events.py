"""User events as the feature service and the experiment module see them (no protobuf here)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class EventType(enum.IntEnum):
    """Kinds of user events; the values equal the API's `EventType` numbers."""

    IMPRESSION = 1
    CLICK = 2
    PRODUCT_VIEW = 3
    ADD_TO_CART = 4
    PURCHASE = 5


# Events after which an item counts as "recently viewed" (a click opens the product page).
VIEW_EVENTS = frozenset({EventType.CLICK, EventType.PRODUCT_VIEW})


@dataclass(frozen=True, slots=True)
class Event:
    """One validated user event."""

    event_id: str
    type: EventType
    user_id: str
    item_id: str
    request_id: str
    timestamp: datetime
    """Timezone-aware (UTC)."""
    quantity: int = 0
    revenue: float = 0.0
    currency: str = ""
    position: int = 0


@dataclass(frozen=True, slots=True)
class RecordResult:
    """Outcome of storing a batch: how many events were new, how many already stored."""

    accepted: int
    duplicates: int
