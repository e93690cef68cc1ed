"""The production feature store (`feature_store.backend: redis_postgres`): L1 → L2 → L3.

- L1, in process: a size-bounded TTL cache of hot users (`cachetools.TTLCache`).
- L2, Redis (`redis_cache`): users' real-time lists and counters, shared by every gateway
  process. A user L1 lacks is read from Redis in one pipelined round trip.
- L3, Postgres (`postgres`): the offline snapshot and the durable event log; the source of truth
  that L2 is filled from (read-through, one loader per user per process).

Item features are not read from here: the gateway gathers them from the catalogue it loads at
startup (`feature_service.catalogue`).

Writes (`record_events`): Postgres first (durable, idempotent by event id), then only the new
events go to Redis in one transaction that also publishes the users on an invalidation channel;
this process drops its L1 copies at once, other processes when the message arrives (within a
millisecond or so; `l1.user_ttl_s` bounds staleness if a message is lost).

Degradation, never blocking beyond the caller's timeout (the gateway wraps calls in
`asyncio.timeout`; loads are shielded, so a caller giving up leaves the load to finish and fill
the caches):

- Redis down: reads go to Postgres and count `recsys_feature_store_errors_total{level="l2"}`;
  for `redis.retry_after_s` after a failure Redis is not tried at all. Writes still succeed
  (Postgres has them); the users whose Redis state missed the write are deleted from Redis as
  soon as it answers again.
- Postgres down too: reads are served from L1, else raise `FeatureStoreError` (the gateway then
  uses empty default features and flags the response); writes raise `FeatureStoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
import numpy.typing as npt
from cachetools import TTLCache
from prometheus_client import CollectorRegistry

from feature_service.catalogue import ItemCatalogue
from feature_service.config import FeatureStoreSettings
from feature_service.events import Event, RecordResult
from feature_service.postgres import PostgresStore
from feature_service.prometheus_metrics import FeatureStoreMetrics
from feature_service.records import Activity, UserState
from feature_service.redis_cache import CacheUnavailableError, Invalidation, RedisCache
from feature_service.singleflight import SingleFlight
from feature_service.spool import EventSpool
from feature_service.store import EMPTY_POSITIONS, FeatureStoreError, UserFeatures

_log = logging.getLogger(__name__)

# Longest a read-through load can take (bounded by the Postgres timeout); an invalidation is
# remembered this long so a load that started before it does not refill L1 with old data.
_INVALIDATION_MEMORY_S = 60.0
_MAX_STALE_USERS = 100_000
# Longest the last spool replay may hold up closing (inside the pod's termination grace).
_FINAL_REPLAY_TIMEOUT_S = 5.0

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class _CachedUser:
    """A user as L1 holds it: catalogue positions with event times, ready for a window cut."""

    known: bool
    viewed_at: npt.NDArray[np.float64]
    viewed: npt.NDArray[np.int32]
    purchased_at: npt.NDArray[np.float64]
    purchased: npt.NDArray[np.int32]

    @classmethod
    def of(cls, state: UserState, catalogue: ItemCatalogue) -> _CachedUser:
        def split(activity: Activity) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]]:
            pairs = [
                (t, catalogue.position[item])
                for t, item in state.recent.get(activity, ())
                if item in catalogue.position
            ]
            times = np.fromiter((t for t, _ in pairs), dtype=np.float64, count=len(pairs))
            positions = np.fromiter((p for _, p in pairs), dtype=np.int32, count=len(pairs))
            return times, positions

        viewed_at, viewed = split(Activity.VIEW)
        purchased_at, purchased = split(Activity.PURCHASE)
        return cls(state.known, viewed_at, viewed, purchased_at, purchased)

    def features(self, user_id: str, since: float) -> UserFeatures:
        return UserFeatures(
            user_id=user_id,
            known=self.known,
            recent_viewed=_since(self.viewed_at, self.viewed, since),
            recent_purchased=_since(self.purchased_at, self.purchased, since),
        )


def _since(
    times: npt.NDArray[np.float64], positions: npt.NDArray[np.int32], since: float
) -> npt.NDArray[np.int32]:
    if positions.size == 0:
        return EMPTY_POSITIONS
    kept: npt.NDArray[np.int32] = np.unique(positions[times >= since])
    return kept


class LayeredFeatureStore:
    """`FeatureStore` over an in-process cache, Redis and Postgres.

    Open with `await LayeredFeatureStore.open(...)` (or `async with`), close with `close()`.
    """

    def __init__(
        self,
        settings: FeatureStoreSettings,
        catalogue: ItemCatalogue,
        postgres: PostgresStore,
        redis: RedisCache,
        metrics: FeatureStoreMetrics,
        clock: Clock = time.monotonic,
    ) -> None:
        self._settings = settings
        self._catalogue = catalogue
        self._postgres = postgres
        self._redis = redis
        self.metrics = metrics
        self._clock = clock
        self._window_s = float(settings.recent_window_s)
        # L1 users.
        self._users: TTLCache[str, _CachedUser] = TTLCache(
            maxsize=settings.l1.max_users, ttl=settings.l1.user_ttl_s, timer=clock
        )
        self._epoch = 0
        self._reset_epoch = 0
        self._invalidated: TTLCache[str, int] = TTLCache(
            maxsize=settings.l1.max_users, ttl=_INVALIDATION_MEMORY_S, timer=clock
        )
        # L2 health and repairs owed to it.
        self._redis_retry_at = 0.0
        self._redis_down = False
        self._stale_users: set[str] = set()
        self._user_loads: SingleFlight[str, UserState] = SingleFlight()
        self._listener: asyncio.Task[None] | None = None
        self._spool = EventSpool(settings.spool_path, settings.spool_adopt)
        metrics.spool_pending.set_function(self._spool.pending_events)
        self._replayer: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        settings: FeatureStoreSettings,
        catalogue: ItemCatalogue,
        data_dir: Path,
        registry: CollectorRegistry | None = None,
    ) -> LayeredFeatureStore:
        """Connects to Postgres (applying migrations), loads the offline snapshot from
        `data_dir` when Postgres does not hold these files yet, creates the Redis client and
        starts listening for invalidations. Redis may be down: reads then use Postgres.

        Raises:
            FeatureStoreError: Postgres is unreachable, a migration or the snapshot load failed.
        """
        metrics = FeatureStoreMetrics(registry)
        async with contextlib.AsyncExitStack() as stack:
            postgres = await PostgresStore.open(settings.postgres)
            stack.push_async_callback(postgres.close)
            await postgres.load_snapshot_files(data_dir, datetime.now(UTC))
            redis = RedisCache.create(settings.redis, settings.recent_items)
            stack.push_async_callback(redis.close)
            store = cls(settings, catalogue, postgres, redis, metrics)
            subscribed = asyncio.Event()
            store._listener = asyncio.create_task(
                redis.listen(
                    store._on_invalidation,
                    store._on_resubscribe,
                    settings.redis.retry_after_s,
                    subscribed,
                ),
                name="feature-store-invalidations",
            )
            stack.push_async_callback(store._stop_listener)
            # Batches spooled while Postgres was down (by this process or a crashed one).
            store._replayer = asyncio.create_task(
                store._replay_spool(settings.spool_replay_interval_s), name="event-spool-replay"
            )
            stack.push_async_callback(store._stop_replayer)
            # Wait briefly for the subscription so no invalidation is missed from the start;
            # with Redis down the listener keeps retrying in the background.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.redis.timeout_s * 4):
                    await subscribed.wait()
            stack.pop_all()
        return store

    async def close(self) -> None:
        """Stops the invalidation listener and in-flight loads, then closes Redis and Postgres
        (reverse order of opening). Events still in the spool get one last replay; what stays
        there is logged as an error, since it is only stored once a process starts again with
        the same spool path."""
        await self._stop_replayer()
        await self._final_replay()
        await self._stop_listener()
        await self._user_loads.close()
        await self._redis.close()
        await self._postgres.close()
        await self._spool.close()

    async def _stop_replayer(self) -> None:
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
            self._replayer = None

    async def _final_replay(self) -> None:
        if not self._spool.pending():
            return
        try:
            async with asyncio.timeout(_FINAL_REPLAY_TIMEOUT_S):
                stored = await self._spool.replay(self._store_events)
            _log.info("replayed the event spool before closing: %d events newly stored", stored)
        except (FeatureStoreError, TimeoutError) as exc:
            _log.error(
                "closing with %d acknowledged events still in the spool %s (%s): they are "
                "stored when a process starts with this spool path; deleting the file or its "
                "volume loses them",
                self._spool.pending_events(),
                self._spool.path,
                str(exc) or "timed out",
            )

    async def _replay_spool(self, interval_s: float) -> None:
        while True:
            if self._spool.pending() or self._spool.orphans():
                try:
                    stored = await self._spool.replay(self._store_events)
                    _log.info("replayed the event spool: %d events newly stored", stored)
                except FeatureStoreError as exc:
                    _log.warning("event spool not replayed yet: %s", exc)
            await asyncio.sleep(interval_s)

    async def _stop_listener(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- FeatureStore ------------------------------------------------------------------------

    async def user_features(self, user_id: str, now: datetime) -> UserFeatures:
        """Features of `user_id` as of `now`; unknown users get empty features. A user L1
        lacks is read from Redis, one Redis lacks from Postgres (and filled into Redis).

        Raises:
            FeatureStoreError: neither L1, Redis nor Postgres could serve the user.
        """
        started = time.perf_counter()
        cached = self._users.get(user_id)
        self.metrics.count("l1", "user", int(cached is not None), int(cached is None))
        self.metrics.duration["l1"].observe(time.perf_counter() - started)
        if cached is None:
            cached = await self._fill(user_id, now)
        return cached.features(user_id, now.timestamp() - self._window_s)

    async def record_events(self, events: Sequence[Event]) -> RecordResult:
        """Stores the batch in Postgres (durable, idempotent by event id), then applies the new
        events to Redis and drops the users from every process's L1. With Postgres down the
        batch goes to the local spool instead (fsynced) and is stored when Postgres is back;
        its counts then say every event is accepted, since duplicates are only known later.

        Raises:
            FeatureStoreError: neither Postgres nor the spool could take the batch.
        """
        try:
            return await self._store_events(events)
        except FeatureStoreError as exc:
            await self._spool.append(events)
            self.metrics.spooled.inc(len(events))
            _log.warning(
                "Postgres unavailable, %d events spooled to %s: %s",
                len(events),
                self._spool.path,
                exc,
            )
            return RecordResult(accepted=len(events), duplicates=0)

    async def _store_events(self, events: Sequence[Event]) -> RecordResult:
        started = time.perf_counter()
        try:
            new = await self._postgres.insert_events(events)
        except FeatureStoreError:
            self.metrics.error["l3"].inc()
            raise
        finally:
            self.metrics.duration["l3"].observe(time.perf_counter() - started)
        users = list(dict.fromkeys(e.user_id for e in new))
        for user_id in users:
            self._invalidate_user(user_id)
        if new:
            if self._redis_usable():
                try:
                    await self._repair_redis()
                    await self._redis.record(new)
                except CacheUnavailableError as exc:
                    self._redis_failed(exc)
                    self._owe_redis(users)
            else:
                self._owe_redis(users)
        return RecordResult(accepted=len(new), duplicates=len(events) - len(new))

    # -- cache control (tests, benchmarks, operations) ---------------------------------------

    def clear_local(self) -> None:
        """Empties L1."""
        self._users.clear()

    # -- internals: the read path ------------------------------------------------------------

    async def _fill(self, user_id: str, now: datetime) -> _CachedUser:
        """Loads a user L1 lacks: from Redis, else from Postgres."""
        epoch = self._epoch
        l2_user: UserState | None = None
        if self._redis_usable():
            started = time.perf_counter()
            try:
                await self._repair_redis()
                l2_user = await self._redis.get_user(user_id)
            except CacheUnavailableError as exc:
                self._redis_failed(exc)
            else:
                self._redis_ok()
                self.metrics.duration["l2"].observe(time.perf_counter() - started)
                hit = l2_user is not None and user_id not in self._stale_users
                self.metrics.count("l2", "user", int(hit), int(not hit))
                if not hit:
                    l2_user = None
        state = l2_user if l2_user is not None else await self._load_user(user_id, now)
        entry = _CachedUser.of(state, self._catalogue)
        # An invalidation during the load means `state` may predate a recorded batch.
        if self._reset_epoch <= epoch and self._invalidated.get(user_id, -1) <= epoch:
            self._users[user_id] = entry
        return entry

    async def _load_user(self, user_id: str, now: datetime) -> UserState:
        since = now - timedelta(seconds=self._window_s)
        return await self._user_loads.do(user_id, lambda: self._read_through_user(user_id, since))

    async def _read_through_user(self, user_id: str, since: datetime) -> UserState:
        async def load() -> UserState:
            return await self._timed_l3(
                self._postgres.user_state(user_id, since, self._settings.recent_items)
            )

        if self._redis_usable() and user_id not in self._stale_users:
            try:
                state, error = await self._redis.fill_user(user_id, load)
            except CacheUnavailableError as exc:
                self._redis_failed(exc)
            else:
                if error is not None:
                    self._redis_failed(error)
                return state
        return await load()

    async def _timed_l3(self, call: Awaitable[UserState]) -> UserState:
        started = time.perf_counter()
        try:
            result = await call
        except FeatureStoreError:
            self.metrics.error["l3"].inc()
            raise
        finally:
            self.metrics.duration["l3"].observe(time.perf_counter() - started)
        self.metrics.count("l3", "user", 1, 0)
        return result

    # -- internals: L2 health, invalidation --------------------------------------------------

    def _redis_usable(self) -> bool:
        return self._clock() >= self._redis_retry_at

    def _redis_ok(self) -> None:
        if self._redis_down:
            self._redis_down = False
            _log.warning("redis is back: reads use L2 again")

    def _redis_failed(self, exc: FeatureStoreError) -> None:
        self.metrics.error["l2"].inc()
        self._redis_retry_at = self._clock() + self._settings.redis.retry_after_s
        if not self._redis_down:
            self._redis_down = True
            _log.warning("redis unavailable, reading from postgres: %s", exc)

    def _owe_redis(self, user_ids: Sequence[str]) -> None:
        if len(self._stale_users) + len(user_ids) > _MAX_STALE_USERS:
            _log.warning("too many users with stale redis state; relying on user_ttl_s")
            return
        self._stale_users.update(user_ids)

    async def _repair_redis(self) -> None:
        """Deletes the Redis state of users whose writes Redis missed while it was down."""
        if self._stale_users:
            users = list(self._stale_users)
            await self._redis.delete_users(users)
            self._stale_users.difference_update(users)

    def _invalidate_user(self, user_id: str) -> None:
        self._epoch += 1
        self._invalidated[user_id] = self._epoch
        self._users.pop(user_id, None)
        self._user_loads.forget(user_id)

    def _on_invalidation(self, message: Invalidation) -> None:
        for user_id in message.user_ids:
            self._invalidate_user(user_id)

    def _on_resubscribe(self) -> None:
        # Messages may have been missed while unsubscribed: trust nothing cached.
        self._epoch += 1
        self._reset_epoch = self._epoch
        self._users.clear()
