"""Stage 1: turn protobuf requests into validated stage inputs, or raise InvalidArgument.

Every rule names the offending field in its message. The whole request is validated before any
work or write happens, so a bad event in a batch stores nothing.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from recsys.v1 import recommendation_pb2 as pb
from uuid_utils import uuid7

from feature_service.events import Event, EventType
from feature_service.surfaces import Surface
from gateway.errors import InvalidArgument
from gateway.stages.types import RecommendQuery, RequestContext

DEFAULT_NUM_ITEMS = 10
MAX_NUM_ITEMS = 100
MAX_USER_ID = 128
MAX_ITEM_ID = 64
MAX_ID = 128
MAX_QUANTITY = 1_000_000
MAX_REVENUE = 1e9
MIN_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_CLIENT_TIME_SKEW = timedelta(days=1)
_LOCALE = re.compile(r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8}){0,4}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
# Unicode categories never allowed in an id: control, format, surrogate, private use, unassigned,
# line and paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_DEVICES = frozenset(pb.Device.values())
_SURFACES = frozenset(pb.Surface.values())
_PAGES = frozenset(pb.Page.values())
_EVENT_TYPES = frozenset(int(t) for t in EventType)


@dataclass(frozen=True, slots=True)
class Limits:
    """The configurable limits validation enforces (from the `serving` section)."""

    max_recommend_request_bytes: int
    max_events_request_bytes: int
    max_exclude_items: int
    max_events_per_batch: int
    max_event_future_skew: timedelta


def validate_recommend(
    request: pb.RecommendRequest, limits: Limits, now: datetime
) -> RecommendQuery:
    """Checks a Recommend request and returns the pipeline's input."""
    size = request.ByteSize()
    if size > limits.max_recommend_request_bytes:
        raise InvalidArgument(
            "request",
            f"is {size} bytes, at most " f"{limits.max_recommend_request_bytes} are accepted",
        )
    user_id = check_id("user_id", request.user_id, MAX_USER_ID)
    num_items = DEFAULT_NUM_ITEMS
    if request.HasField("num_items"):
        num_items = request.num_items
        if not 1 <= num_items <= MAX_NUM_ITEMS:
            raise InvalidArgument(
                "num_items", f"must be between 1 and {MAX_NUM_ITEMS}, " f"got {num_items}"
            )
    if len(request.exclude_item_ids) > limits.max_exclude_items:
        raise InvalidArgument(
            "exclude_item_ids",
            f"has {len(request.exclude_item_ids)} ids, "
            f"at most {limits.max_exclude_items} are accepted",
        )
    exclude = tuple(
        check_id(f"exclude_item_ids[{i}]", item_id, MAX_ITEM_ID)
        for i, item_id in enumerate(request.exclude_item_ids)
    )
    request_id = check_id("request_id", request.request_id, MAX_ID, required=False)
    if request.surface not in _SURFACES:
        raise InvalidArgument("surface", f"unknown Surface value {request.surface}")
    return RecommendQuery(
        user_id=user_id,
        num_items=num_items,
        context=_validate_context(request.context, now),
        exclude_item_ids=exclude,
        # Generated ids are time-ordered (UUIDv7): exposure rows keyed by them append to the
        # end of the key's B-tree in SQLite and Postgres, where random (v4) ids land anywhere
        # and make each insert slower as the table grows (benchmarks/exposure_keys.py).
        request_id=request_id or uuid7().hex,
        # Unset (SURFACE_UNSPECIFIED, 0) is MIXED: what a client built before the field gets.
        surface=Surface(request.surface or pb.SURFACE_MIXED),
    )


def _validate_context(context: pb.RequestContext, now: datetime) -> RequestContext:
    if context.device not in _DEVICES:
        raise InvalidArgument("context.device", f"unknown Device value {context.device}")
    if context.page not in _PAGES:
        raise InvalidArgument("context.page", f"unknown Page value {context.page}")
    if context.locale and not _LOCALE.match(context.locale):
        raise InvalidArgument("context.locale", "must be a BCP 47 tag such as en-GB")
    if context.country and not _COUNTRY.match(context.country):
        raise InvalidArgument("context.country", "must be an ISO 3166-1 alpha-2 code such as GB")
    time, clock_skewed = now, False
    if context.HasField("client_time"):
        client_time = check_timestamp("context.client_time", context.client_time)
        # A device clock set wrong is the shopper's phone, not a bad request: answer with the
        # server's time and say so (DEGRADED_REASON_CLIENT_CLOCK_SKEW) instead of failing.
        if abs(client_time - now) <= MAX_CLIENT_TIME_SKEW:
            time = client_time
        else:
            clock_skewed = True
    return RequestContext(
        device=context.device,
        page=context.page,
        locale=context.locale,
        country=context.country,
        session_id=check_id("context.session_id", context.session_id, MAX_ID, required=False),
        time=time,
        client_clock_skewed=clock_skewed,
    )


def validate_events(request: pb.RecordEventsRequest, limits: Limits, now: datetime) -> list[Event]:
    """Checks a whole RecordEvents batch; returns the events in request order."""
    size = request.ByteSize()
    if size > limits.max_events_request_bytes:
        raise InvalidArgument(
            "request",
            f"is {size} bytes, at most " f"{limits.max_events_request_bytes} are accepted",
        )
    count = len(request.events)
    if not 1 <= count <= limits.max_events_per_batch:
        raise InvalidArgument(
            "events", f"must hold 1 to {limits.max_events_per_batch} events, " f"got {count}"
        )
    latest = now + limits.max_event_future_skew
    return [_validate_event(f"events[{i}]", e, latest) for i, e in enumerate(request.events)]


def _validate_event(where: str, event: pb.UserEvent, latest: datetime) -> Event:
    if event.type not in _EVENT_TYPES:
        raise InvalidArgument(f"{where}.type", f"unknown or unspecified EventType {event.type}")
    kind = EventType(event.type)
    if not event.HasField("timestamp"):
        raise InvalidArgument(f"{where}.timestamp", "is required")
    timestamp = check_timestamp(f"{where}.timestamp", event.timestamp)
    if timestamp > latest:
        raise InvalidArgument(f"{where}.timestamp", "lies in the future")
    if timestamp < MIN_EVENT_TIME:
        raise InvalidArgument(f"{where}.timestamp", "is before 2000-01-01")
    if not 0 <= event.position <= 10_000:
        raise InvalidArgument(f"{where}.position", "must be between 0 and 10000")
    quantity, revenue, currency = 0, 0.0, ""
    if kind is EventType.PURCHASE:
        quantity = event.quantity or 1
        if not 1 <= quantity <= MAX_QUANTITY:
            raise InvalidArgument(f"{where}.quantity", f"must be between 1 and {MAX_QUANTITY}")
        revenue = event.revenue
        if not (math.isfinite(revenue) and 0.0 <= revenue <= MAX_REVENUE):
            raise InvalidArgument(f"{where}.revenue", "must be a finite amount >= 0")
        if not _CURRENCY.match(event.currency):
            raise InvalidArgument(f"{where}.currency", "must be an ISO 4217 code such as GBP")
        currency = event.currency
    elif event.quantity or event.revenue or event.currency:
        raise InvalidArgument(
            f"{where}.revenue", "quantity, revenue and currency are only allowed on purchases"
        )
    return Event(
        event_id=check_id(f"{where}.event_id", event.event_id, MAX_ID),
        type=kind,
        user_id=check_id(f"{where}.user_id", event.user_id, MAX_USER_ID),
        item_id=check_id(f"{where}.item_id", event.item_id, MAX_ITEM_ID),
        request_id=check_id(f"{where}.request_id", event.request_id, MAX_ID, required=False),
        timestamp=timestamp,
        quantity=quantity,
        revenue=revenue,
        currency=currency,
        position=event.position,
    )


def check_id(field: str, value: str, max_length: int, required: bool = True) -> str:
    """An id: 1..max_length characters, no control/format characters, no surrounding spaces."""
    if not value:
        if required:
            raise InvalidArgument(field, "is required")
        return value
    if len(value) > max_length:
        raise InvalidArgument(field, f"is {len(value)} characters long, at most {max_length}")
    if value != value.strip():
        raise InvalidArgument(field, "has leading or trailing whitespace")
    for char in value:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise InvalidArgument(
                field, f"contains the control or format character " f"U+{ord(char):04X}"
            )
    return value


def check_timestamp(field: str, value: Timestamp) -> datetime:
    """A Timestamp within the proto's documented range, as an aware UTC datetime."""
    if not (0 <= value.nanos < 1_000_000_000 and -62135596800 <= value.seconds <= 253402300799):
        raise InvalidArgument(field, "is not a valid timestamp")
    return datetime.fromtimestamp(value.seconds, UTC) + timedelta(microseconds=value.nanos // 1000)
