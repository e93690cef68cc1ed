"""Capacity and cost arithmetic, against hand-computed values."""

from __future__ import annotations

import pytest

from benchmarks.harness import capacity


def test_capacity_plan_by_hand() -> None:
    # 600 req/s on 2 cores -> 300 per core; at 70% busy 210 per core.
    plan = capacity.capacity_plan(
        600.0, 2, target_rps=10_000, utilisation=0.7, cores_per_replica=2, usd_per_vcpu_hour=0.05
    )
    assert plan.rps_per_core == pytest.approx(300.0)
    assert plan.cores_needed == 48  # ceil(10000 / 210) = ceil(47.62)
    assert plan.replicas_needed == 24
    # 0.05 $/h / (300 req/s * 3600 s) * 1e6 = 0.046296 $ per million at full load.
    assert plan.usd_per_million_at_full_load == pytest.approx(0.0462963, rel=1e-6)
    assert plan.usd_per_million == pytest.approx(0.0661376, rel=1e-6)
    assert plan.meets_brief_cost


def test_expensive_plan_misses_the_brief() -> None:
    plan = capacity.capacity_plan(20.0, 2, usd_per_vcpu_hour=0.05)
    # 10 req/s per core: 0.05 / 36000 * 1e6 / 0.7 = 1.984 $ per million.
    assert plan.usd_per_million == pytest.approx(1.984127, rel=1e-6)
    assert not plan.meets_brief_cost


def test_default_price_is_per_vcpu_of_the_instance() -> None:
    per_vcpu = capacity.PRICE_USD_PER_INSTANCE_HOUR / capacity.PRICE_VCPUS_PER_INSTANCE
    assert pytest.approx(per_vcpu) == capacity.PRICE_USD_PER_VCPU_HOUR


@pytest.mark.parametrize(
    ("rps", "cores", "utilisation"), [(0.0, 2, 0.7), (100.0, 0, 0.7), (100.0, 2, 0.0)]
)
def test_rejects_meaningless_input(rps: float, cores: int, utilisation: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        capacity.capacity_plan(rps, cores, utilisation=utilisation)


def test_cpu_accounted_rate() -> None:
    assert capacity.cpu_accounted_rps_per_core(9000, 12.0) == pytest.approx(750.0)
    assert capacity.cpu_accounted_rps_per_core(9000, 0.0) is None


def test_capacity_scenario_plans_at_the_briefs_bound_and_at_ours() -> None:
    from benchmarks import ghz_scenarios

    steps = [{"target_rps": 250, "ok": 3750, "server_cpu_s": 15.0}]
    scen = {
        "rate_search": {"steps": steps, "sustainable_rps": {"p99_lt_100ms": 250, "p99_lt_50ms": 90}}
    }
    plan = ghz_scenarios._capacity(scen, None, {"cpu_count": 2})
    assert plan["measured_rps"] == 250
    assert plan["basis"].startswith("highest open-loop rate with p99 < 100 ms")
    assert plan["p99_bound_ms"] == 100
    assert plan["at_p99_lt_50ms"]["measured_rps"] == 90
    assert plan["at_p99_lt_50ms"]["usd_per_million"] == pytest.approx(
        plan["usd_per_million"] * 250 / 90, rel=1e-3
    )
    assert plan["server_cpu_accounted_rps_per_core"] == 250.0  # 3750 answers / 15 CPU-seconds
    none_under_100 = {"rate_search": {"steps": [], "sustainable_rps": {"p99_lt_100ms": None}}}
    assert "skipped" in ghz_scenarios._capacity(none_under_100, None, {"cpu_count": 2})
    forced = ghz_scenarios._capacity(none_under_100, 300, {"cpu_count": 2})
    assert forced["basis"] == "--base-rps"
    assert forced["p99_bound_ms"] is None
    assert forced["measured_rps"] == 300
    assert "at_p99_lt_50ms" not in forced
