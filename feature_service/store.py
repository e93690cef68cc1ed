"""The interface every feature store backend serves, and the features it returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np
import numpy.typing as npt

from feature_service.events import Event, RecordResult

EMPTY_POSITIONS: npt.NDArray[np.int32] = np.empty(0, dtype=np.int32)


class FeatureStoreError(Exception):
    """A backend failed to read or write; callers degrade (reads) or report UNAVAILABLE."""


@dataclass(frozen=True, slots=True)
class UserFeatures:
    """What the serving path knows about one user at request time."""

    user_id: str
    known: bool
    """The user has purchase history in the offline snapshot."""
    recent_viewed: npt.NDArray[np.int32]
    """Catalogue positions the user viewed or clicked within the recent window."""
    recent_purchased: npt.NDArray[np.int32]
    """Catalogue positions the user bought within the recent window."""


class FeatureStore(Protocol):
    """Reads user features and records events; one implementation per backend."""

    async def user_features(self, user_id: str, now: datetime) -> UserFeatures:
        """Features of `user_id` as of `now`; unknown users get empty features."""
        ...

    async def record_events(self, events: Sequence[Event]) -> RecordResult:
        """Stores the batch durably (idempotent by event id) and updates real-time features."""
        ...
