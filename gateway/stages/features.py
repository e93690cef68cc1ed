"""Stage 3: fetch the user's features within the stage's time budget, degrading to defaults."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from feature_service.store import EMPTY_POSITIONS, FeatureStore, FeatureStoreError, UserFeatures

_log = logging.getLogger(__name__)


async def fetch_user_features(
    store: FeatureStore, user_id: str, now: datetime, timeout_s: float
) -> tuple[UserFeatures, bool]:
    """The user's features and whether they are complete.

    A slow or failing store is not an error: the user gets empty features (popular items,
    nothing filtered as recently seen) and the second value is False so the response says so.
    """
    try:
        async with asyncio.timeout(max(timeout_s, 0.0)):
            return await store.user_features(user_id, now), True
    except (TimeoutError, FeatureStoreError) as exc:
        _log.warning("user features unavailable, using defaults: %r", exc)
        return UserFeatures(user_id, False, EMPTY_POSITIONS, EMPTY_POSITIONS), False
