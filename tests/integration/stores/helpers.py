"""Small helpers shared by the store tests: events and metric reads."""

from __future__ import annotations

from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry

from feature_service.events import Event, EventType


def event(
    event_id: str,
    user_id: str,
    item_id: str,
    at: datetime,
    event_type: EventType = EventType.PRODUCT_VIEW,
    revenue: float = 0.0,
) -> Event:
    """One event with the fields the store cares about."""
    return Event(
        event_id=event_id,
        type=event_type,
        user_id=user_id,
        item_id=item_id,
        request_id=f"req-{event_id}",
        timestamp=at,
        quantity=1 if event_type is EventType.PURCHASE else 0,
        revenue=revenue,
        currency="GBP" if revenue else "",
    )


def views(user_id: str, item_ids: list[str], now: datetime, prefix: str = "v") -> list[Event]:
    """One product view per item, a second apart, the last one a second before `now`."""
    n = len(item_ids)
    return [
        event(f"{prefix}-{user_id}-{i}", user_id, item, now - timedelta(seconds=n - i))
        for i, item in enumerate(item_ids)
    ]


def requests(registry: CollectorRegistry, level: str, entity: str, result: str) -> float:
    """`recsys_feature_cache_requests_total` for one label set (0 when never counted)."""
    value = registry.get_sample_value(
        "recsys_feature_cache_requests_total",
        {"level": level, "entity": entity, "result": result},
    )
    return value or 0.0


def errors(registry: CollectorRegistry, level: str) -> float:
    """`recsys_feature_store_errors_total` for one level."""
    value = registry.get_sample_value("recsys_feature_store_errors_total", {"level": level})
    return value or 0.0


def lookups(registry: CollectorRegistry, level: str) -> float:
    """How many lookups `recsys_feature_lookup_duration_seconds` observed at `level`."""
    value = registry.get_sample_value(
        "recsys_feature_lookup_duration_seconds_count", {"level": level}
    )
    return value or 0.0
