"""The shipped experiment on the default list (MIXED against today's BUY_AGAIN list), in its
own layer beside the ranker experiment: simulated traffic in which MIXED leads customers to
buy products new to them makes the controller promote it, on the embedded files and on
Postgres alike, while the ranker experiment that the same users are in decides on its own."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from ab.assignment import Assignment
from ab.backends import PostgresMetricsDatabase, SqliteMetricsDatabase
from ab.controller import Controller, Evaluation
from ab.prometheus_metrics import SidecarMetrics
from ab.sidecar_settings import load_sidecar_settings
from ab.store import JsonStateStore, PostgresStateStore, StateStore
from ab.variant_sums import ExperimentMetrics
from tests.integration.ab.simulate import ArmBehaviour, load, load_sqlite, simulate_layers

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
EXPERIMENTS = load_sidecar_settings(
    REPO / "infra" / "config" / "local.yaml", {}
).ab_testing.experiments
NOW = datetime(2026, 3, 6, tzinfo=UTC)  # after the simulated traffic
# Ten items per response. Today's list holds one product new to the customer, MIXED three
# (its discovery slots); customers click and buy at the same rates in both lists, so the
# share of purchases that are new products rises and conversion stays.
TODAY = ArmBehaviour(0.2, 0.3, new_items=1)
MIXED = ArmBehaviour(0.2, 0.3, new_items=3)


def _behaviour(arms: tuple[Assignment, ...]) -> ArmBehaviour:
    surface = next(a for a in arms if a.experiment == "mixed_vs_buy_again")
    return TODAY if surface.variant == "control" else MIXED


async def _evaluate(metrics: ExperimentMetrics, store: StateStore) -> dict[str, Evaluation]:
    controller = Controller(
        EXPERIMENTS, metrics, store, SidecarMetrics(CollectorRegistry()), clock=lambda: NOW
    )
    return {e.experiment: e for e in await controller.run_once()}


async def test_a_better_mixed_list_is_promoted_on_both_stores(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    assert [(e.name, e.layer) for e in EXPERIMENTS] == [
        ("ranker_v2_vs_v3", "main"),
        ("mixed_vs_buy_again", "surface"),
    ]
    # 6,500 users: the shipped plan (mde 20%, power 0.8) needs about 2,900 per arm here
    exposures, events = simulate_layers(EXPERIMENTS, 6500, _behaviour, seed=3)
    # every user is in both experiments: one exposure per experiment for each response
    assert {e.experiment for e in exposures} == {"ranker_v2_vs_v3", "mixed_vs_buy_again"}
    assert len({e.request_id for e in exposures}) * 2 == len(exposures)

    exposure_log, event_log = tmp_path / "exposures.sqlite3", tmp_path / "events.sqlite3"
    await load_sqlite(exposure_log, event_log, exposures, events)
    await load(pool, exposures, events)
    database = await SqliteMetricsDatabase.open(exposure_log, event_log)
    try:
        embedded = await _evaluate(
            ExperimentMetrics(database), JsonStateStore(tmp_path / "state.json")
        )
    finally:
        await database.close()
    postgres = await _evaluate(
        ExperimentMetrics(PostgresMetricsDatabase(pool)), PostgresStateStore(pool)
    )

    for decided in (embedded, postgres):
        surface = decided["mixed_vs_buy_again"]
        assert surface.decision == "promote", surface.reason
        assert surface.weights == {"control": 0.0, "treatment": 1.0}
        assert surface.reason.startswith("discovery_purchase_share of treatment +")
        assert surface.breached == ()  # conversion and revenue per user held
        values = surface.values
        assert values["treatment"]["discovery_share"] == pytest.approx(0.3)
        assert values["control"]["discovery_share"] == pytest.approx(0.1)
        assert (
            values["treatment"]["discovery_purchase_share"]
            > 2 * (values["control"]["discovery_purchase_share"])
        )
        # the ranker arms behave alike: that experiment goes on, whatever the surface did
        assert decided["ranker_v2_vs_v3"].decision == "continue"
    assert embedded["mixed_vs_buy_again"].reason == postgres["mixed_vs_buy_again"].reason
