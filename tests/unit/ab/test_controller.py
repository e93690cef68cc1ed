"""Controller decisions from fixed per-variant sums (no database)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from scipy import stats

from ab.config import ExperimentConfig, GuardrailConfig, VariantConfig
from ab.controller import Controller, evaluate, required_users
from ab.health import VariantHealth
from ab.prometheus_metrics import SidecarMetrics
from ab.store import JsonStateStore
from ab.variant_sums import VariantSums

NOW = datetime(2026, 3, 10, tzinfo=UTC)


def experiment(**overrides: Any) -> ExperimentConfig:
    fields: dict[str, Any] = {
        "name": "exp",
        "salt": "s",
        "variants": (
            VariantConfig(name="control", model="m2", weight=0.5),
            VariantConfig(name="treatment", model="m3", weight=0.5),
        ),
        "primary_metric": "conversion_rate",
        "guardrails": (GuardrailConfig(metric="ctr", max_relative_degradation=0.05),),
        "min_users_per_variant": 1000,
        "decision_policy": "sequential",
    }
    fields.update(overrides)
    return ExperimentConfig(**fields)


def simulated(
    variant: str, users: int, ctr: float, conversion: float, seed: int, price: float = 20.0
) -> VariantSums:
    """Per-variant sums of simulated users (the SQL's definitions, per user)."""
    rng = np.random.default_rng(seed)
    impressions = rng.poisson(20, users).astype(float)
    clicks = rng.binomial(impressions.astype(int), ctr).astype(float)
    purchases = rng.binomial(clicks.astype(int), conversion).astype(float)
    revenue = purchases * price
    orders = purchases
    return VariantSums(
        variant,
        users,
        impressions.sum(),
        (impressions**2).sum(),
        clicks.sum(),
        (clicks**2).sum(),
        (clicks * impressions).sum(),
        purchases.sum(),
        (purchases**2).sum(),
        (purchases * clicks).sum(),
        revenue.sum(),
        (revenue**2).sum(),
        orders.sum(),
        (orders**2).sum(),
        (revenue * orders).sum(),
    )


def arms(control: VariantSums, treatment: VariantSums) -> dict[str, VariantSums]:
    return {"control": control, "treatment": treatment}


def test_sample_ratio_mismatch_rolls_back() -> None:
    sums = arms(simulated("control", 5000, 0.1, 0.1, 1), simulated("treatment", 4600, 0.1, 0.1, 2))
    result = evaluate(experiment(), sums, NOW)
    assert result.decision == "rollback" and result.status == "rolled_back"
    assert result.weights == {"control": 1.0, "treatment": 0.0}
    expected_p = stats.chisquare([5000, 4600], [4800, 4800]).pvalue
    assert result.srm_p_value == pytest.approx(expected_p, rel=1e-9)
    assert result.evidence["srm"]["p_value"] < 0.001
    assert "sample-ratio mismatch" in result.reason


def test_guardrail_breach_rolls_back() -> None:
    sums = arms(
        simulated("control", 3000, 0.10, 0.1, 1), simulated("treatment", 3000, 0.08, 0.1, 2)
    )
    result = evaluate(experiment(), sums, NOW)
    assert result.decision == "rollback" and result.breached == ("ctr",)
    [test] = result.evidence["guardrails"]
    assert test["alternative"] == "less" and test["method"] == "sequential"
    assert test["relative_effect"] < -0.05 and test["p_value"] < 0.05 and test["breached"]


def test_small_significant_degradation_within_tolerance_does_not_roll_back() -> None:
    sums = arms(
        simulated("control", 20000, 0.100, 0.1, 1), simulated("treatment", 20000, 0.097, 0.1, 2)
    )
    loose = experiment(
        guardrails=(GuardrailConfig(metric="ctr", max_relative_degradation=0.2),),
        decision_policy="fixed_horizon",
    )
    result = evaluate(loose, sums, NOW)
    [test] = result.evidence["guardrails"]
    assert test["p_value"] < 0.05 and not test["breached"]
    assert result.decision == "continue"


def test_clear_win_after_minimum_sample_promotes() -> None:
    sums = arms(
        simulated("control", 3000, 0.1, 0.10, 1), simulated("treatment", 3000, 0.1, 0.16, 2)
    )
    result = evaluate(experiment(), sums, NOW)
    assert result.decision == "promote" and result.status == "promoted"
    assert result.weights == {"control": 0.0, "treatment": 1.0}
    [primary] = result.evidence["primary"]
    assert primary["metric"] == "conversion_rate" and primary["p_value"] < 0.05


def test_clear_win_before_minimum_sample_continues() -> None:
    sums = arms(
        simulated("control", 3000, 0.1, 0.10, 1), simulated("treatment", 3000, 0.1, 0.16, 2)
    )
    result = evaluate(experiment(min_users_per_variant=5000), sums, NOW)
    assert result.decision == "continue" and result.status is None
    assert "waiting for 5000 users" in result.reason


def test_no_difference_continues_then_stops_at_the_end() -> None:
    sums = arms(simulated("control", 3000, 0.1, 0.1, 1), simulated("treatment", 3000, 0.1, 0.1, 2))
    config = experiment(end=NOW + timedelta(days=1))
    assert evaluate(config, sums, NOW).decision == "continue"
    ended = evaluate(config, sums, NOW + timedelta(days=1))
    assert ended.decision == "stop" and ended.status == "stopped" and ended.weights is None


def test_treatment_error_rate_rolls_back() -> None:
    sums = arms(simulated("control", 3000, 0.1, 0.1, 1), simulated("treatment", 3000, 0.1, 0.1, 2))
    config = experiment(max_error_rate=0.01, max_latency_p99_ms=100)
    healthy = {"treatment": VariantHealth(error_rate=0.001, latency_p99_s=0.05)}
    assert evaluate(config, sums, NOW, health=healthy).decision == "continue"
    slow = {"treatment": VariantHealth(error_rate=0.001, latency_p99_s=0.2)}
    result = evaluate(config, sums, NOW, health=slow)
    assert result.decision == "rollback" and "p99 200 ms" in result.reason


def test_minimum_sample_comes_from_power() -> None:
    control = simulated("control", 3000, 0.1, 0.1, 1)
    needed = required_users(experiment(min_users_per_variant=None), control)
    stats_c = control.stats("conversion_rate")
    assert stats_c is not None and needed is not None
    # Independent closed form: 2 (z_{0.975} + z_{0.8})^2 sigma^2 / (mde mean)^2.
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    closed = 2 * z**2 * stats_c.variance / (0.05 * stats_c.mean) ** 2
    assert abs(needed - closed) <= 2


def test_missing_arm_continues() -> None:
    result = evaluate(experiment(), {"control": simulated("control", 10, 0.1, 0.1, 1)}, NOW)
    assert result.decision == "continue"  # 10 vs 0 users: chi2 = 10, p = 0.0016 > 0.001
    assert result.srm_p_value == pytest.approx(stats.chi2.sf(10.0, 1), rel=1e-9)
    empty = evaluate(experiment(), {}, NOW)
    assert empty.decision == "continue" and empty.srm_p_value is None


class _Sums:
    def __init__(self, sums: Mapping[str, VariantSums]) -> None:
        self.sums = sums

    async def variant_sums(self, experiment: ExperimentConfig) -> Mapping[str, VariantSums]:
        return self.sums


async def test_controller_writes_state_audit_and_metrics(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = SidecarMetrics(registry)
    store = JsonStateStore(tmp_path / "state.json")
    worse = arms(
        simulated("control", 3000, 0.10, 0.1, 1), simulated("treatment", 3000, 0.08, 0.1, 2)
    )
    controller = Controller([experiment()], _Sums(worse), store, metrics, clock=lambda: NOW)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"experiment": "exp", **labels})

    assert sample("recsys_experiment_decisions_total", decision="rollback") == 0.0
    [result] = await controller.run_once()
    assert result.decision == "rollback"
    state = (await store.load_states())["exp"]
    assert state.status == "rolled_back" and state.weights == {"control": 1.0, "treatment": 0.0}
    [record] = await store.decisions("exp")
    assert record.decision == "rollback" and record.evidence["guardrails"][0]["breached"]
    assert sample("recsys_experiment_decisions_total", decision="rollback") == 1.0
    assert sample("recsys_experiment_decisions_total", decision="promote") == 0.0
    assert sample("recsys_experiment_guardrail_breached", metric="ctr") == 1.0
    assert sample("recsys_experiment_srm_p_value") is not None
    assert sample("recsys_experiment_metric", variant="treatment", metric="ctr") == pytest.approx(
        worse["treatment"].clicks / worse["treatment"].impressions
    )
    # Decided experiments are not evaluated again.
    assert await controller.run_once() == []


def test_operator_weights_skip_the_srm_test() -> None:
    sums = arms(simulated("control", 5000, 0.1, 0.1, 1), simulated("treatment", 4600, 0.1, 0.1, 2))
    result = evaluate(experiment(), sums, NOW, weights_overridden=True)
    assert result.decision == "continue" and result.srm_p_value is None
    assert result.evidence["srm"] == {"skipped": "weights overridden while running"}
