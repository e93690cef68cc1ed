"""Exposure recording, and the user-level metrics SQL on both backends (a real Postgres and
the embedded profile's SQLite files) against the same pandas reference."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import asyncpg
import numpy as np
import pandas as pd
import pytest

from ab.assignment import assign
from ab.backends import PostgresMetricsDatabase, SqliteMetricsDatabase
from ab.config import ExperimentConfig, VariantConfig
from ab.exposures import Exposure
from ab.store import PostgresExposureSink, load_migrations, migrate, open_pool
from ab.variant_sums import ExperimentMetrics, VariantSums, period_ends
from feature_service.config import PostgresSettings
from feature_service.postgres import PostgresStore
from feature_service.postgres import load_migrations as feature_migrations
from tests.integration.ab.simulate import (
    EVENT_COLUMNS,
    T0,
    ArmBehaviour,
    EventRow,
    event_row,
    load,
    load_sqlite,
    simulate,
)

pytestmark = pytest.mark.integration

EXPERIMENT = ExperimentConfig(
    name="ranker_test",
    salt="ranker_test_salt",
    variants=(
        VariantConfig(name="control", model="ranker_v2", weight=0.5),
        VariantConfig(name="treatment", model="ranker_v3", weight=0.5),
    ),
)


async def test_migrations_apply_once(pool: asyncpg.Pool) -> None:
    assert await migrate(pool, load_migrations()) == []
    async with pool.acquire() as connection:
        rows = await connection.fetch("SELECT version, name FROM ab_schema_migrations")
    assert [(r["version"], r["name"]) for r in sorted(rows)] == [
        (1, "experiments"),
        (2, "layers_and_novelty"),
    ]


async def test_a_fresh_database_can_be_analysed_before_any_gateway_starts(
    pool: asyncpg.Pool, pg_settings: PostgresSettings
) -> None:
    # The sidecar opens its pool while the gateways are still starting: the feature store's
    # `events` table, which the analysis joins, must not be left to them.
    async with pool.acquire() as connection:
        await connection.execute("DROP DATABASE IF EXISTS ab_fresh")
        await connection.execute("CREATE DATABASE ab_fresh")
    fresh = pg_settings.model_copy(update={"dsn": pg_settings.dsn.rsplit("/", 1)[0] + "/ab_fresh"})
    fresh_pool = await open_pool(fresh)
    try:
        assert await ExperimentMetrics(PostgresMetricsDatabase(fresh_pool)).sums(EXPERIMENT) == {}
        async with fresh_pool.acquire() as connection:
            applied = await connection.fetchval("SELECT count(*) FROM schema_migrations")
        assert applied == len(feature_migrations())
        store = await PostgresStore.open(fresh)  # a gateway starting afterwards: nothing to do
        await store.close()
    finally:
        await fresh_pool.close()
        async with pool.acquire() as connection:
            await connection.execute("DROP DATABASE ab_fresh")


async def test_exposure_sink_is_idempotent(pool: asyncpg.Pool) -> None:
    sink = PostgresExposureSink(pool)
    batch = [
        Exposure(f"r{i}", f"u{i}", "exp", "control" if i % 2 else "treatment", "3",
                 ("i1", "i2", f"i{i}"), T0 + timedelta(seconds=i), 0.5)
        for i in range(10)
    ]  # fmt: skip
    await sink.write(batch)
    await sink.write(batch[:5])  # a retried batch
    await sink.write([dataclasses.replace(batch[0], variant="control", user_id="other")])
    await sink.write([])
    assert await sink.counts("exp") == {"control": 5, "treatment": 5}
    async with pool.acquire() as connection:
        row = await connection.fetchrow("SELECT * FROM exposures WHERE request_id = 'r3'")
    assert row["item_ids"] == ["i1", "i2", "i3"]
    assert row["user_id"] == "u3" and row["assignment_probability"] == 0.5
    assert row["ts"] == T0 + timedelta(seconds=3)


@dataclass(frozen=True)
class Backend:
    """One store's metrics reader and how to put traffic into it."""

    metrics: ExperimentMetrics
    load: Callable[[Sequence[Exposure], Sequence[EventRow]], Awaitable[None]]


@pytest.fixture
async def sqlite_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    """The embedded profile's files: exposure log and event log."""
    exposure_log, event_log = tmp_path / "exposures.sqlite3", tmp_path / "events.sqlite3"
    database = await SqliteMetricsDatabase.open(exposure_log, event_log)

    async def load_files(exposures: Sequence[Exposure], events: Sequence[EventRow]) -> None:
        await load_sqlite(exposure_log, event_log, exposures, events)

    try:
        yield Backend(ExperimentMetrics(database), load_files)
    finally:
        await database.close()


@pytest.fixture
def postgres_backend(pool: asyncpg.Pool) -> Backend:
    """Exposures and events in Postgres."""

    async def load_postgres(exposures: Sequence[Exposure], events: Sequence[EventRow]) -> None:
        await load(pool, exposures, events)

    return Backend(ExperimentMetrics(PostgresMetricsDatabase(pool)), load_postgres)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """The same reads on both stores (Postgres started only for its cases)."""
    found: Backend = request.getfixturevalue(f"{request.param}_backend")
    return found


def _pandas_sums(
    exposures: list[Exposure],
    events: list[EventRow],
    end: pd.Timestamp,
    recorded: list[Exposure] | None = None,
) -> dict[str, dict[str, float]]:
    """The metric definitions of ab.variant_sums, computed independently with pandas.

    `exposures`: those since the window's start; `recorded`: every exposure stored (what says
    which items of an event's request were new), `exposures` when None.
    """
    exp = pd.DataFrame(
        {
            "request_id": [e.request_id for e in exposures],
            "user_id": [e.user_id for e in exposures],
            "variant": [e.variant for e in exposures],
            "ts": pd.to_datetime([e.timestamp for e in exposures], utc=True),
            "recommended": [float(len(e.item_ids)) for e in exposures],
            "recommended_new": [float(len(e.new_item_ids)) for e in exposures],
        }
    )
    exp = exp[exp.ts < end]
    ev = pd.DataFrame(events, columns=list(EVENT_COLUMNS))
    ev["ts"] = pd.to_datetime(ev.ts, utc=True)
    listed_new = {e.request_id: set(e.new_item_ids) for e in recorded or exposures}
    ev["is_new"] = [
        item in listed_new.get(request, set())
        for request, item in zip(ev.request_id, ev.item_id, strict=True)
    ]
    exposed = exp.groupby(["variant", "user_id"]).ts.min().rename("first_ts").reset_index()
    served = exp.groupby(["variant", "user_id"])[["recommended", "recommended_new"]].sum()
    assigned = {}
    for user in exposed.user_id.unique():
        found = assign(EXPERIMENT, user)
        if found is not None:
            assigned[user] = found.variant
    by_request = pd.DataFrame(
        {
            "request_id": [e.request_id for e in exposures],
            "x_variant": [e.variant for e in exposures],
        }
    )
    ev = ev.merge(by_request, on="request_id", how="left")
    ev["attributed"] = ev.x_variant.where(ev.x_variant.notna(), ev.user_id.map(assigned))
    joined = exposed.merge(
        ev, left_on=["user_id", "variant"], right_on=["user_id", "attributed"], how="inner"
    )
    joined = joined[(joined.ts >= joined.first_ts) & (joined.ts < end)]
    per_user = pd.DataFrame(
        {
            "impressions": joined[joined.type == 1].groupby(["variant", "user_id"]).size(),
            "clicks": joined[joined.type == 2].groupby(["variant", "user_id"]).size(),
            "purchases": joined[joined.type == 5].groupby(["variant", "user_id"]).size(),
            "revenue": joined[joined.type == 5].groupby(["variant", "user_id"]).revenue.sum(),
            "orders": joined[joined.type == 5].groupby(["variant", "user_id"]).ts.nunique(),
            "clicks_new": joined[(joined.type == 2) & joined.is_new]
            .groupby(["variant", "user_id"])
            .size(),
            "purchases_new": joined[(joined.type == 5) & joined.is_new]
            .groupby(["variant", "user_id"])
            .size(),
        }
    )
    index = pd.MultiIndex.from_frame(exposed[["variant", "user_id"]])
    per_user = per_user.reindex(index).fillna(0.0).astype(float).join(served)
    out: dict[str, dict[str, float]] = {}
    for variant, g in per_user.groupby(level="variant"):
        out[str(variant)] = {
            "users": float(len(g)),
            "impressions": g.impressions.sum(),
            "impressions_sq": (g.impressions**2).sum(),
            "clicks": g.clicks.sum(),
            "clicks_sq": (g.clicks**2).sum(),
            "clicks_x_impressions": (g.clicks * g.impressions).sum(),
            "purchases": g.purchases.sum(),
            "purchases_sq": (g.purchases**2).sum(),
            "purchases_x_clicks": (g.purchases * g.clicks).sum(),
            "revenue": g.revenue.sum(),
            "revenue_sq": (g.revenue**2).sum(),
            "orders": g.orders.sum(),
            "orders_sq": (g.orders**2).sum(),
            "revenue_x_orders": (g.revenue * g.orders).sum(),
            "recommended": g.recommended.sum(),
            "recommended_sq": (g.recommended**2).sum(),
            "recommended_new": g.recommended_new.sum(),
            "recommended_new_sq": (g.recommended_new**2).sum(),
            "recommended_new_x_recommended": (g.recommended_new * g.recommended).sum(),
            "clicks_new": g.clicks_new.sum(),
            "clicks_new_sq": (g.clicks_new**2).sum(),
            "clicks_new_x_clicks": (g.clicks_new * g.clicks).sum(),
            "purchases_new": g.purchases_new.sum(),
            "purchases_new_sq": (g.purchases_new**2).sum(),
            "purchases_new_x_purchases": (g.purchases_new * g.purchases).sum(),
        }
    return out


def _extra_events(rng: np.random.Generator, users: int) -> list[EventRow]:
    """Events without an exposure's request id (attributed by assignment), some before the
    first exposure, some after the window, a two-line order and a never-exposed user."""
    rows: list[EventRow] = []
    for i in range(0, users, 3):
        user = f"u{i}"
        for k in range(3):
            ts = T0 + timedelta(hours=float(rng.uniform(-24, 96)))
            kind = int(rng.choice([1, 2, 5]))
            revenue = float(rng.uniform(1, 50)) if kind == 5 else 0.0
            rows.append(event_row(f"x-{user}-{k}", kind, user, f"organic-{user}-{k}", ts, revenue))
        checkout = T0 + timedelta(hours=30)
        rows.append(event_row(f"x-{user}-o1", 5, user, "checkout", checkout, 10.0))
        rows.append(event_row(f"x-{user}-o2", 5, user, "checkout", checkout, 5.5))
    rows.append(event_row("x-nobody", 2, "never-exposed", "nope", T0, 0.0))
    return rows


async def test_variant_sums_equal_pandas(backend: Backend) -> None:
    behaviour = {
        "control": ArmBehaviour(0.2, 0.3, new_items=1),
        "treatment": ArmBehaviour(0.25, 0.2, new_items=4),
    }
    exposures, events = simulate(EXPERIMENT, 300, behaviour, seed=11)
    events += _extra_events(np.random.default_rng(5), 300)
    await backend.load(exposures, events)
    end = T0 + timedelta(days=2)

    got = await backend.metrics.sums(EXPERIMENT, end=end)
    expected = _pandas_sums(exposures, events, pd.Timestamp(end))

    assert set(got) == set(expected) == {"control", "treatment"}
    for variant, sums in got.items():
        for name, value in expected[variant].items():
            assert getattr(sums, name) == pytest.approx(value, rel=1e-9, abs=1e-9), (variant, name)
    # the window matters: without an end more users and events count
    everything = await backend.metrics.sums(EXPERIMENT)
    assert sum(s.users for s in everything.values()) > sum(s.users for s in got.values())
    # a start drops the users first exposed before it
    late = await backend.metrics.sums(EXPERIMENT, start=T0 + timedelta(days=1), end=end)
    expected_late = _pandas_sums(
        [e for e in exposures if e.timestamp >= T0 + timedelta(days=1)],
        events,
        pd.Timestamp(end),
        exposures,
    )
    for variant, sums in late.items():
        for name, value in expected_late[variant].items():
            assert getattr(sums, name) == pytest.approx(value, rel=1e-9, abs=1e-9), (variant, name)


async def test_cumulative_periods_end_with_the_total(backend: Backend) -> None:
    exposures, events = simulate(
        EXPERIMENT, 120, {"control": ArmBehaviour(0.2, 0.3), "treatment": ArmBehaviour(0.2, 0.3)}
    )
    await backend.load(exposures, events)
    span = await backend.metrics.exposure_span(EXPERIMENT)
    assert span is not None
    first, last = min(e.timestamp for e in exposures), max(e.timestamp for e in exposures)
    # SQLite keeps integer microseconds (the writer's float conversion may drop one)
    assert abs(span[0] - first) <= timedelta(microseconds=1)
    assert abs(span[1] - last) <= timedelta(microseconds=1)
    ends = period_ends(*span, timedelta(days=1))
    assert len(ends) == 4 and ends[0] == (T0 + timedelta(days=1)).replace(hour=0)
    daily = await backend.metrics.cumulative(EXPERIMENT, start=None, ends=ends)
    users = [sum(s.users for s in sums.values()) for sums in daily]
    assert users == sorted(users) and users[0] > 0
    total = await backend.metrics.sums(EXPERIMENT)
    final = daily[-1]
    assert set(final) == set(total)
    for variant, sums in total.items():  # float sums may add up in another order
        numbers = {k: v for k, v in sums.as_dict().items() if k != "variant"}
        got = {k: v for k, v in final[variant].as_dict().items() if k != "variant"}
        assert got == pytest.approx(numbers, rel=1e-12)


async def test_nothing_exposed_reads_empty(backend: Backend) -> None:
    assert await backend.metrics.exposure_span(EXPERIMENT) is None
    assert await backend.metrics.sums(EXPERIMENT) == {}


def _user_assigned_to(variant: str) -> str:
    return next(
        f"a{i}" for i in range(1000) if (a := assign(EXPERIMENT, f"a{i}")) and a.variant == variant
    )


async def test_attribution_by_request_id_then_by_assignment(backend: Backend) -> None:
    user = _user_assigned_to("control")
    # The user saw control (request r-c) and, after a re-weighting, treatment (request r-t).
    exposures = [
        Exposure("r-c", user, EXPERIMENT.name, "control", "2", ("a",), T0),
        Exposure("r-t", user, EXPERIMENT.name, "treatment", "3", ("b",), T0 + timedelta(hours=1)),
    ]
    later = T0 + timedelta(hours=2)
    events = [
        event_row("e1", 2, user, "r-t", later),  # by request id -> treatment
        event_row("e2", 2, user, "r-t", later),
        event_row("e3", 2, user, "r-c", later),  # by request id -> control
        event_row("e4", 2, user, "unknown", later),  # no exposure: by assignment -> control
        event_row("e5", 5, user, "unknown", later, 12.5),
        event_row("e6", 2, user, "r-t", T0),  # before the treatment exposure: not counted
    ]
    await backend.load(exposures, events)
    sums = await backend.metrics.sums(EXPERIMENT)
    assert (sums["treatment"].clicks, sums["treatment"].purchases) == (2.0, 0.0)
    assert (sums["control"].clicks, sums["control"].purchases) == (2.0, 1.0)
    assert sums["control"].revenue == 12.5 and sums["control"].orders == 1.0
    assert sums["control"].users == sums["treatment"].users == 1


async def test_undefined_metrics_are_none(backend: Backend) -> None:
    user = _user_assigned_to("control")
    await backend.load([Exposure("r1", user, EXPERIMENT.name, "control", "2", (), T0)], [])
    sums = await backend.metrics.sums(EXPERIMENT)
    only: VariantSums = sums["control"]
    assert only.users == 1 and only.stats("ctr") is None and only.value("ctr") is None


async def test_one_response_in_two_layers_counts_in_each_experiment(backend: Backend) -> None:
    surface = ExperimentConfig(
        name="surface_test",
        salt="surface_test_salt",
        layer="surface",
        variants=(
            VariantConfig(name="control", weight=0.5, serve_surface=False),
            VariantConfig(name="treatment", weight=0.5),
        ),
    )
    user = _user_assigned_to("control")
    found = assign(surface, user)
    assert found is not None
    listed = Exposure(
        "r1", user, EXPERIMENT.name, "control", "2", ("a", "n1"), T0, new_item_ids=("n1",)
    )
    layered = dataclasses.replace(listed, experiment=surface.name, variant=found.variant)
    exposures = [listed, layered]
    later = T0 + timedelta(minutes=1)
    events = [
        event_row("e1", 2, user, "r1", later, item_id="n1"),  # a click on the new item
        event_row("e2", 5, user, "r1", later, 9.0, "n1"),  # and its purchase
        event_row("e3", 2, user, "r1", later, item_id="a"),  # a click on an own item
        event_row("e4", 2, user, "organic", later, item_id="n1"),  # no exposure: not new
    ]
    await backend.load(exposures, events)
    for experiment, variant in ((EXPERIMENT, "control"), (surface, found.variant)):
        sums = (await backend.metrics.sums(experiment))[variant]
        assert (sums.users, sums.clicks, sums.purchases) == (1, 3.0, 1.0)
        assert (sums.recommended, sums.recommended_new) == (2.0, 1.0)
        assert (sums.clicks_new, sums.purchases_new) == (1.0, 1.0)
        assert sums.value("discovery_share") == 0.5
        assert sums.value("discovery_click_share") == pytest.approx(1 / 3)
        assert sums.value("discovery_purchase_share") == 1.0
