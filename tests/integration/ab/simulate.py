"""Synthetic experiment traffic: exposures from the real assignment, outcome events per user."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import numpy as np

from ab.assignment import Assignment, assign_layers
from ab.config import ExperimentConfig
from ab.exposures import Exposure, SqliteExposureSink
from ab.store import PostgresExposureSink
from feature_service.event_log import SqliteEventLog
from feature_service.events import Event, EventType

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
EVENT_COLUMNS = (
    "event_id",
    "type",
    "user_id",
    "item_id",
    "request_id",
    "ts",
    "quantity",
    "revenue",
    "currency",
    "position",
)


@dataclass(frozen=True)
class ArmBehaviour:
    """How users of one arm behave."""

    ctr: float
    """Click probability per impression."""
    conversion: float
    """Purchase probability per click."""
    price: float = 20.0
    """Mean revenue of a purchase."""
    new_items: int = 0
    """Of the items each response lists, how many are new to the user (the exposure's
    `new_item_ids`); a click picks a listed item uniformly. 0 keeps the older traffic: two
    items, every event on `item1`."""


EventRow = tuple[str, int, str, str, str, datetime, int, float, str, int]


def event_row(
    event_id: str,
    kind: int,
    user_id: str,
    request_id: str,
    ts: datetime,
    revenue: float = 0.0,
    item_id: str = "item1",
) -> EventRow:
    """One `events` row."""
    return (event_id, kind, user_id, item_id, request_id, ts, 1, revenue, "GBP", 0)


def simulate(
    experiment: ExperimentConfig,
    users: int,
    behaviour: Mapping[str, ArmBehaviour],
    *,
    seed: int = 7,
    days: int = 3,
    impressions_per_request: int = 10,
) -> tuple[list[Exposure], list[EventRow]]:
    """Exposures (1-3 requests per user, spread over `days`) and the users' events."""
    return simulate_layers(
        (experiment,),
        users,
        lambda arms: behaviour[arms[0].variant],
        seed=seed,
        days=days,
        impressions_per_request=impressions_per_request,
    )


def simulate_layers(
    experiments: Sequence[ExperimentConfig],
    users: int,
    behaviour: Callable[[tuple[Assignment, ...]], ArmBehaviour],
    *,
    seed: int = 7,
    days: int = 3,
    impressions_per_request: int = 10,
) -> tuple[list[Exposure], list[EventRow]]:
    """Like `simulate` for experiments in layers: each request gives one exposure per arm the
    user is in (`ab.assignment.assign_layers`), and the user behaves as `behaviour` says for
    that combination of arms."""
    rng = np.random.default_rng(seed)
    exposures: list[Exposure] = []
    events: list[EventRow] = []
    for i in range(users):
        user = f"u{i}"
        found = assign_layers(experiments, user)
        if not found:
            continue
        arm = behaviour(found)
        for r in range(int(rng.integers(1, 4))):
            request = f"{user}-r{r}"
            ts = T0 + timedelta(hours=float(rng.uniform(0, 24 * days)))
            items, new = _listed(arm, impressions_per_request)
            exposures.extend(
                Exposure(request, user, a.experiment, a.variant, "1", items, ts, new_item_ids=new)
                for a in found
            )
            clicks = int(rng.binomial(impressions_per_request, arm.ctr))
            for k in range(impressions_per_request):
                events.append(event_row(f"{request}-i{k}", 1, user, request, ts))
            for k in range(clicks):
                click_ts = ts + timedelta(seconds=10 + k)
                item = items[int(rng.integers(len(items)))] if new else "item1"
                events.append(event_row(f"{request}-c{k}", 2, user, request, click_ts, 0.0, item))
                if rng.random() < arm.conversion:
                    revenue = float(rng.gamma(2.0, arm.price / 2.0))
                    events.append(
                        event_row(f"{request}-p{k}", 5, user, request, click_ts, revenue, item)
                    )
    return exposures, events


def _listed(arm: ArmBehaviour, count: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The items one response lists and those of them new to the user."""
    if arm.new_items == 0:
        return ("a", "b"), ()
    new = tuple(f"new{j}" for j in range(arm.new_items))
    return new + tuple(f"own{j}" for j in range(count - arm.new_items)), new


async def load(
    pool: asyncpg.Pool, exposures: Sequence[Exposure], events: Sequence[EventRow]
) -> None:
    """Writes exposures through the sink and COPYs the events."""
    sink = PostgresExposureSink(pool)
    for start in range(0, len(exposures), 1000):
        await sink.write(exposures[start : start + 1000])
    async with pool.acquire() as connection:
        await connection.copy_records_to_table(
            "events", records=list(events), columns=list(EVENT_COLUMNS)
        )
        # Statistics of the loaded tables, as autovacuum keeps them in production: planned
        # with those of an earlier test's few rows, the metric joins take minutes.
        await connection.execute("ANALYZE exposures, events")


async def load_sqlite(
    exposure_log: Path,
    event_log: Path,
    exposures: Sequence[Exposure],
    events: Sequence[EventRow],
) -> None:
    """Writes exposures and events into the embedded profile's files, as the gateway does."""
    sink = await SqliteExposureSink.open(exposure_log)
    try:
        for start in range(0, len(exposures), 1000):
            await sink.write(exposures[start : start + 1000])
    finally:
        await sink.close()
    log = await SqliteEventLog.open(event_log)
    try:
        rows = [Event(r[0], EventType(r[1]), *r[2:]) for r in events]
        for start in range(0, len(rows), 1000):
            await log.append(rows[start : start + 1000])
    finally:
        await log.close()
