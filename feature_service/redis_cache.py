"""L2: Redis holds each user's real-time state, shared by all processes.

Keys (the `{user}` hash tag keeps a user's keys in one cluster slot):

- `recsys:u:{<user>}` hash: `known` (present only once the user was filled from Postgres, so
  its absence means "miss") and counters (`n:<event type>`, `revenue`).
- `recsys:u:{<user>}:v|c|p` lists: recent views (incl. clicks), carts, purchases, newest first,
  entries `<event time ms>:<item id>`, trimmed to `feature_store.recent_items`.

Every user key expires after `user_ttl_s`. A RecordEvents batch
is one MULTI/EXEC pipeline (LPUSH + LTRIM + HINCRBY + EXPIRE per user, then PUBLISH of the
users on the invalidation channel so other processes drop their in-process copies). A fill from
Postgres WATCHes the user's keys first, so a batch recorded meanwhile makes the fill back off
instead of overwriting newer data. A user's lookups (profile and lists) are one pipelined round
trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from feature_service.config import RedisSettings
from feature_service.events import Event, EventType
from feature_service.records import (
    ACTIVITY_OF,
    REVENUE_FIELD,
    Activity,
    ActivityEntry,
    UserState,
    counter_field,
)
from feature_service.store import FeatureStoreError

_log = logging.getLogger(__name__)

PREFIX = "recsys"
INVALIDATION_CHANNEL = f"{PREFIX}:invalidate"
_KNOWN = b"known"
_USERS_MESSAGE = "users"
_ERRORS = (redis_errors.RedisError, OSError, TimeoutError)


class CacheUnavailableError(FeatureStoreError):
    """Redis could not be reached or failed; callers fall back to Postgres."""


def user_key(user_id: str) -> str:
    """The hash of a user's profile marker and counters."""
    return f"{PREFIX}:u:{{{user_id}}}"


def activity_key(user_id: str, activity: Activity) -> str:
    """A user's list for one activity."""
    return f"{PREFIX}:u:{{{user_id}}}:{activity.value}"


def _user_keys(user_id: str) -> list[str]:
    return [user_key(user_id), *(activity_key(user_id, a) for a in Activity)]


def _entry(event: Event) -> bytes:
    return f"{int(event.timestamp.timestamp() * 1000)}:{event.item_id}".encode()


def _parse_entries(raw: Sequence[bytes]) -> list[ActivityEntry]:
    entries: list[ActivityEntry] = []
    for value in raw:
        ms, _, item_id = value.decode().partition(":")
        entries.append((int(ms) / 1000.0, item_id))
    return entries


@dataclass(frozen=True, slots=True)
class Invalidation:
    """A message on the invalidation channel."""

    user_ids: tuple[str, ...] = ()


def _encode_invalidation(invalidation: Invalidation) -> bytes:
    return "\n".join((_USERS_MESSAGE, *invalidation.user_ids)).encode()


def decode_invalidation(data: bytes) -> Invalidation:
    """The message published by `record` or `delete_users`."""
    _, *user_ids = data.decode().split("\n")
    return Invalidation(user_ids=tuple(user_ids))


class RedisCache:
    """The L2 cache; create with `RedisCache.create(settings, recent_items)`, then `close()`."""

    def __init__(self, client: Redis, settings: RedisSettings, recent_items: int) -> None:
        self._client = client
        self._settings = settings
        self._recent_items = recent_items

    @classmethod
    def create(cls, settings: RedisSettings, recent_items: int) -> RedisCache:
        """A cache over a new client; connections open on first use, so Redis may be down."""
        password = settings.password.get_secret_value() if settings.password else None
        client = Redis.from_url(
            settings.url,
            password=password,
            socket_timeout=settings.timeout_s,
            socket_connect_timeout=settings.timeout_s,
            # One quick retry replaces a pooled connection that died with a Redis restart.
            retry=Retry(NoBackoff(), 1),
            decode_responses=False,
        )
        return cls(client, settings, recent_items)

    async def close(self) -> None:
        """Closes the client and its connection pool."""
        await self._client.aclose()

    @contextlib.asynccontextmanager
    async def _guard(self, operation: str) -> AsyncIterator[None]:
        try:
            yield
        except _ERRORS as exc:
            raise CacheUnavailableError(f"redis: {operation} failed: {exc!r}") from exc

    async def ping(self) -> None:
        """Raises CacheUnavailableError unless Redis answers."""
        async with self._guard("ping"):
            await self._client.ping()

    # -- reads -------------------------------------------------------------------------------

    def _queue_user(self, pipe: Pipeline, user_id: str) -> None:
        pipe.hgetall(user_key(user_id))
        for activity in Activity:
            pipe.lrange(activity_key(user_id, activity), 0, self._recent_items - 1)

    @staticmethod
    def _user_from(user_id: str, replies: Sequence[Any]) -> UserState | None:
        profile: dict[bytes, bytes] = replies[0]
        if _KNOWN not in profile:
            return None  # never filled, expired, or only partial writes since
        counters = {k.decode(): float(v) for k, v in profile.items() if k != _KNOWN}
        recent = {
            activity: _parse_entries(raw)
            for activity, raw in zip(Activity, replies[1 : 1 + len(Activity)], strict=True)
        }
        return UserState(
            user_id=user_id, known=profile[_KNOWN] == b"1", recent=recent, counters=counters
        )

    async def get_user(self, user_id: str) -> UserState | None:
        """The user's state in one pipelined round trip, or None on a miss.

        Raises:
            CacheUnavailableError: Redis failed.
        """
        async with self._guard("read"), self._client.pipeline(transaction=False) as pipe:
            self._queue_user(pipe, user_id)
            replies = await pipe.execute()
        return self._user_from(user_id, replies)

    # -- fills -------------------------------------------------------------------------------

    async def fill_user(
        self, user_id: str, load: Callable[[], Awaitable[UserState]]
    ) -> tuple[UserState, CacheUnavailableError | None]:
        """Loads the user with `load` (Postgres) and stores the result, unless a batch for the
        user was recorded meanwhile (WATCH): then the next read fills again.

        Returns:
            The loaded state and, when Redis failed after the load, that error.

        Raises:
            CacheUnavailableError: Redis failed before the load (nothing was loaded).
            FeatureStoreError: `load` failed.
        """
        keys = _user_keys(user_id)
        state: UserState | None = None
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                await pipe.watch(*keys)
                state = await load()
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.delete(*keys)
                mapping: dict[str, bytes | float] = {"known": b"1" if state.known else b"0"}
                mapping.update(state.counters)
                pipe.hset(user_key(user_id), mapping=mapping)  # type: ignore[arg-type]
                for activity, entries in state.recent.items():
                    if entries:
                        pipe.rpush(
                            activity_key(user_id, activity),
                            *(f"{int(t * 1000)}:{item}".encode() for t, item in entries),
                        )
                for key in keys:
                    pipe.expire(key, self._settings.user_ttl_s)
                await pipe.execute()
        except redis_errors.WatchError:
            pass  # a writer got there first; its data is newer than ours
        except _ERRORS as exc:
            error = CacheUnavailableError(f"redis: fill user failed: {exc!r}")
            if state is None:
                raise error from exc
            error.__cause__ = exc
            return state, error
        assert state is not None
        return state, None

    # -- writes and invalidation -------------------------------------------------------------

    async def record(self, events: Sequence[Event]) -> None:
        """Applies newly stored events to the users' lists and counters, in one transaction,
        and tells the other processes to drop their copies of these users.
        """
        if not events:
            return
        touched: dict[str, set[Activity]] = {}
        async with self._guard("record events"), self._client.pipeline(transaction=True) as pipe:
            for event in events:
                activities = touched.setdefault(event.user_id, set())
                activity = ACTIVITY_OF.get(event.type)
                if activity is not None:
                    pipe.lpush(activity_key(event.user_id, activity), _entry(event))
                    activities.add(activity)
                pipe.hincrby(user_key(event.user_id), counter_field(event.type), 1)
                if event.type is EventType.PURCHASE:
                    pipe.hincrbyfloat(user_key(event.user_id), REVENUE_FIELD, event.revenue)
            for user_id, activities in touched.items():
                for activity in activities:
                    pipe.ltrim(activity_key(user_id, activity), 0, self._recent_items - 1)
                for key in _user_keys(user_id):
                    pipe.expire(key, self._settings.user_ttl_s)
            pipe.publish(
                INVALIDATION_CHANNEL,
                _encode_invalidation(Invalidation(user_ids=tuple(touched))),
            )
            await pipe.execute()

    async def delete_users(self, user_ids: Sequence[str]) -> None:
        """Drops the users' cached state everywhere (the next read fills from Postgres)."""
        if not user_ids:
            return
        async with self._guard("delete users"), self._client.pipeline(transaction=True) as pipe:
            pipe.unlink(*(key for user_id in user_ids for key in _user_keys(user_id)))
            pipe.publish(
                INVALIDATION_CHANNEL,
                _encode_invalidation(Invalidation(user_ids=tuple(user_ids))),
            )
            await pipe.execute()

    async def listen(
        self,
        on_message: Callable[[Invalidation], None],
        on_reconnect: Callable[[], None],
        retry_after_s: float,
        subscribed: asyncio.Event | None = None,
    ) -> None:
        """Delivers invalidation messages until cancelled, resubscribing after failures.

        `on_reconnect` runs whenever a subscription starts: messages may have been missed while
        it was down, so the caller drops everything it cached. `subscribed` is set once the
        first subscription is active.
        """
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(INVALIDATION_CHANNEL)
                    on_reconnect()
                    if subscribed is not None:
                        subscribed.set()
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                        if message is not None and message["type"] == "message":
                            on_message(decode_invalidation(message["data"]))
            except _ERRORS as exc:
                _log.warning("invalidation subscription lost, retrying: %r", exc)
                on_reconnect()
                await asyncio.sleep(retry_after_s)
