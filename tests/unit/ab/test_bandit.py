"""Thompson-sampling weights and the bandit policy of the controller."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from scipy import integrate, stats

from ab.bandit import thompson_weights
from ab.config import ExperimentConfig, VariantConfig
from ab.controller import Controller, evaluate
from ab.prometheus_metrics import SidecarMetrics
from ab.routing import RoutingTable
from ab.store import JsonStateStore
from tests.unit.ab.test_controller import _Sums, simulated

NOW = datetime(2026, 3, 10, tzinfo=UTC)


def _p_b_beats_a(a: tuple[float, float], b: tuple[float, float]) -> float:
    """P(p_b > p_a) for independent Beta posteriors, by numerical integration."""
    value, _ = integrate.quad(
        lambda x: stats.beta.pdf(x, *b) * stats.beta.cdf(x, *a), 0.0, 1.0, limit=200
    )
    return float(value)


def test_weights_are_the_posterior_probability_of_being_best() -> None:
    successes = {"a": 30.0, "b": 40.0}
    trials = {"a": 300.0, "b": 300.0}
    weights = thompson_weights(
        successes, trials, ["a", "b"], rng=np.random.default_rng(42), draws=200_000
    )
    exact = _p_b_beats_a((31, 271), (41, 261))
    assert weights["b"] == pytest.approx(exact, abs=0.005)  # Monte Carlo error ~0.001
    assert weights["a"] + weights["b"] == pytest.approx(1.0)


def test_fixed_seed_reproduces_the_weights() -> None:
    args = ({"a": 5.0, "b": 6.0, "c": 4.0}, {"a": 50.0, "b": 50.0, "c": 50.0}, ["a", "b", "c"])
    first = thompson_weights(*args, rng=np.random.default_rng(7))
    second = thompson_weights(*args, rng=np.random.default_rng(7))
    assert first == second
    assert sum(first.values()) == pytest.approx(1.0)


def test_floor_keeps_exploring_a_losing_arm() -> None:
    weights = thompson_weights(
        {"a": 0.0, "b": 500.0}, {"a": 1000.0, "b": 1000.0}, ["a", "b"],
        rng=np.random.default_rng(1), min_weight=0.05,
    )  # fmt: skip
    assert weights == pytest.approx({"a": 0.05, "b": 0.95})


def test_invalid_floor_is_refused() -> None:
    with pytest.raises(ValueError, match="min_weight"):
        thompson_weights({}, {}, ["a", "b"], rng=np.random.default_rng(1), min_weight=0.5)


def _bandit(**overrides: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "name": "bandit",
            "salt": "s",
            "variants": (
                VariantConfig(name="control", model="m2", weight=0.5),
                VariantConfig(name="treatment", model="m3", weight=0.5),
            ),
            "decision_policy": "bandit",
            "bandit_min_weight": 0.05,
            **overrides,
        }
    )


def test_bandit_policy_reweights_then_promotes_at_the_end() -> None:
    # Unequal users: a bandit's split is not tested for sample-ratio mismatch.
    sums = {
        "control": simulated("control", 3000, 0.1, 0.10, 1),
        "treatment": simulated("treatment", 1000, 0.1, 0.20, 2),
    }
    running = evaluate(_bandit(), sums, NOW, rng=np.random.default_rng(3))
    assert running.decision == "reweight" and running.status == "running"
    assert running.weights == pytest.approx({"control": 0.05, "treatment": 0.95})
    assert running.srm_p_value is None
    ended = evaluate(_bandit(end=NOW - timedelta(hours=1)), sums, NOW, rng=np.random.default_rng(3))
    assert ended.decision == "promote" and ended.weights == {"control": 0.0, "treatment": 1.0}


async def test_controller_writes_bandit_weights_only_when_they_move(tmp_path: Path) -> None:
    sums = {
        "control": simulated("control", 3000, 0.1, 0.10, 1),
        "treatment": simulated("treatment", 1000, 0.1, 0.20, 2),
    }
    store = JsonStateStore(tmp_path / "state.json")
    controller = Controller(
        [_bandit()], _Sums(sums), store, SidecarMetrics(CollectorRegistry()),
        clock=lambda: NOW, rng=np.random.default_rng(3),
    )  # fmt: skip
    await controller.run_once()
    await controller.run_once()  # same data, same weights: no second audit row
    [record] = await store.decisions("bandit")
    assert record.decision == "reweight"
    state = (await store.load_states())["bandit"]
    assert state.status == "running" and state.weights == pytest.approx(
        {"control": 0.05, "treatment": 0.95}
    )
    table = RoutingTable([_bandit()], await store.load_states())
    routed = [r for u in range(2000) if (r := table.assign(f"user{u}")) is not None]
    assert sorted({round(r.probability, 9) for r in routed}) == [0.05, 0.95]
