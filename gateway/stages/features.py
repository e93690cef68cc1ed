"""Stage 3: the user's features (within the stage's time budget, degrading to defaults) and
the ranking features of the candidates."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt
from cachetools import LRUCache

from feature_service.definitions import (
    Context,
    ItemArrays,
    PurchaseHistory,
    UserState,
    assemble_features,
    build_user_state,
)
from feature_service.history import PurchaseHistories
from feature_service.store import EMPTY_POSITIONS, FeatureStore, FeatureStoreError, UserFeatures
from gateway.stages.types import Candidates, RequestContext

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


class RankingFeatures:
    """Builds the ranker's input for one request with the shared feature definitions
    (`feature_service.definitions`), exactly as the offline pipeline built training rows.

    User states are cached by user and history length: a user's state changes only when a
    purchase of theirs is recorded, which changes the length, so a cached state is never stale
    and a Recommend call rebuilds nothing (the history itself comes cached from
    `PurchaseHistories.purchases`). The matrix is filled by the compiled kernel behind
    `assemble_features`, the function the offline training-set builder calls.
    """

    def __init__(
        self, histories: PurchaseHistories, items: ItemArrays, cache_size: int = 20_000
    ) -> None:
        self._histories = histories
        self._items = items
        self._states: LRUCache[tuple[str, int], UserState] = LRUCache(maxsize=cache_size)

    @property
    def histories(self) -> PurchaseHistories:
        """The purchase histories the features read."""
        return self._histories

    def feature_time(self, moment: datetime) -> datetime:
        """`moment` on the data's timeline (see `PurchaseHistories.time_offset_s`)."""
        return moment - timedelta(seconds=self._histories.time_offset_s)

    def build(
        self,
        user_id: str,
        history: PurchaseHistory,
        candidates: Candidates,
        context: RequestContext,
    ) -> npt.NDArray[np.float32]:
        """`float32 [len(candidates), len(FEATURE_NAMES)]` for the request."""
        country = self._histories.country(user_id)
        key = (user_id, len(history.positions))
        state = self._states.get(key)
        if state is None:
            state = build_user_state(history, self._items, float("inf"), country)
            self._states[key] = state
        when = self.feature_time(context.time)
        features_context = Context(
            time=when, device=context.device, page=context.page, country=context.country or country
        )
        return assemble_features(
            state, self._items, candidates.positions, features_context, candidates.scores
        )
