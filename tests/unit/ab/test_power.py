"""Sample size and power against statsmodels' NormalIndPower / TTestIndPower."""

from __future__ import annotations

import math

import pytest
from statsmodels.stats.power import NormalIndPower, TTestIndPower

from ab.power import (
    PowerInputError,
    minimum_detectable_effect_proportion,
    power_mean,
    power_proportion,
    sample_size_mean,
    sample_size_proportion,
    users_per_variant_for_ctr,
)


def test_product_brief_ctr_scenario_needs_about_208k_users_not_10k() -> None:
    # 3% CTR, +5% relative, alpha 0.05 two-sided, 80% power: the brief claimed 10,000.
    assert users_per_variant_for_ctr() == 207_935
    assert round(power_proportion(0.03, 0.05, 10_000), 5) == 0.09424
    assert round(minimum_detectable_effect_proportion(0.03, 10_000), 3) == 0.238


@pytest.mark.parametrize(
    ("baseline", "mde", "alpha", "power"),
    [(0.03, 0.05, 0.05, 0.8), (0.1, -0.1, 0.01, 0.9), (0.5, 0.02, 0.1, 0.8)],
)
def test_proportion_sample_size_matches_statsmodels(
    baseline: float, mde: float, alpha: float, power: float
) -> None:
    result = sample_size_proportion(baseline, mde, alpha=alpha, power=power)
    treated = baseline * (1 + mde)
    sd = math.sqrt((baseline * (1 - baseline) + treated * (1 - treated)) / 2)
    reference = NormalIndPower().solve_power(
        effect_size=(treated - baseline) / sd, alpha=alpha, power=power, ratio=1.0
    )
    assert result.users_per_variant == math.ceil(reference)
    assert result.total_users == 2 * result.users_per_variant
    assert result.achieved_power >= power
    assert power_proportion(baseline, mde, result.users_per_variant - 1, alpha) < power


def test_mean_sample_size_matches_statsmodels() -> None:
    result = sample_size_mean(10.0, 20.0, 0.05)
    normal = NormalIndPower().solve_power(effect_size=0.5 / 20.0, alpha=0.05, power=0.8)
    t_based = TTestIndPower().solve_power(effect_size=0.5 / 20.0, alpha=0.05, power=0.8)
    assert result.users_per_variant == math.ceil(normal) == 25_117
    assert abs(result.users_per_variant - t_based) < 2  # the t correction is negligible here
    assert round(power_mean(10.0, 20.0, 0.05, result.users_per_variant), 5) == round(
        NormalIndPower().power(effect_size=0.5 / 20.0, nobs1=result.users_per_variant, alpha=0.05),
        5,
    )


def test_mde_inverts_power() -> None:
    mde = minimum_detectable_effect_proportion(0.05, 50_000, alpha=0.05, power=0.8)
    assert math.isclose(power_proportion(0.05, mde, 50_000), 0.8, abs_tol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"baseline": 0.0, "mde": 0.05}, "baseline"),
        ({"baseline": 0.03, "mde": 0.0}, "mde"),
        ({"baseline": 0.9, "mde": 0.5}, "mde"),
        ({"baseline": 0.03, "mde": 0.05, "alpha": 1.5}, "alpha"),
        ({"baseline": 0.03, "mde": 0.05, "power": 1.0}, "power"),
    ],
)
def test_invalid_proportion_inputs_name_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(PowerInputError) as info:
        sample_size_proportion(**kwargs)
    assert info.value.field == field


def test_invalid_mean_inputs_name_the_field() -> None:
    with pytest.raises(PowerInputError) as info:
        sample_size_mean(10.0, 0.0, 0.05)
    assert info.value.field == "baseline_std"
