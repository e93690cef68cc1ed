"""Sequential (confidence-sequence) tests against gbstats' published vectors."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ab import sequential
from ab.statistics import (
    CupedStats,
    MeanStats,
    ProportionStats,
    StatisticsError,
    estimate_effect,
    fixed_horizon_test,
    sequential_test,
)

DECIMALS = 5
TOLERANCE = 0.5 * 10.0**-DECIMALS

CONTROL = MeanStats(n=3000, sum=1396.87, sum_squares=52377.9767)
TREATMENT = MeanStats(n=3461, sum=2422.7, sum_squares=134698.29)


def r5(x: float) -> float:
    return round(x, DECIMALS)


def close(actual: float, expected: float) -> bool:
    return abs(actual - expected) < TOLERANCE


def test_two_sided_mean_matches_gbstats() -> None:
    result = sequential_test(CONTROL, TREATMENT, tuning=1000)
    assert r5(result.effect) == 0.50336
    assert (r5(result.ci[0]), r5(result.ci[1])) == (-0.55844, 1.56516)
    assert r5(result.std_error) == 0.33341
    assert result.p_value == 1.0
    assert result.method == "sequential"


def test_two_sided_proportion_matches_gbstats() -> None:
    result = sequential_test(ProportionStats(3000, 1396), ProportionStats(3461, 2422))
    assert r5(result.effect) == 0.50386
    assert (r5(result.ci[0]), r5(result.ci[1])) == (0.40098, 0.60675)
    assert r5(result.std_error) == 0.03386
    assert r5(result.p_value) == 0.0


def test_two_sided_cuped_matches_gbstats() -> None:
    control = CupedStats(post=CONTROL, pre=MeanStats(3000, 16.87, 527.9767), sum_products_pre=1.0)
    treatment = CupedStats(post=TREATMENT, pre=MeanStats(3461, 22.7, 1348.29), sum_products_pre=1.0)
    result = sequential_test(control, treatment)
    assert result.estimate.cuped
    assert r5(result.effect) == 0.50338
    assert (r5(result.ci[0]), r5(result.ci[1])) == (-0.50969, 1.51646)
    assert r5(result.std_error) == 0.33341
    assert result.p_value == 1.0


@pytest.mark.parametrize(
    ("alternative", "difference", "bound"),
    [
        # gbstats TestSequentialOneSided{Greater,Lesser}TTest, unrounded
        ("greater", "relative", -0.42356454602790883),
        ("greater", "absolute", -0.12656844172804982),
        ("less", "relative", 1.4302867177403806),
        ("less", "absolute", 0.5953217750613832),
    ],
)
def test_one_sided_bounds_match_gbstats(alternative: Any, difference: Any, bound: float) -> None:
    result = sequential_test(CONTROL, TREATMENT, difference=difference, alternative=alternative)
    finite = result.ci[0] if alternative == "greater" else result.ci[1]
    infinite = result.ci[1] if alternative == "greater" else result.ci[0]
    assert close(finite, bound)
    assert infinite == (math.inf if alternative == "greater" else -math.inf)


def _gbstats_bisection(pe: float, se: float, n: int, rho: float) -> float:
    """gbstats' SequentialOneSidedTreatmentGreaterTTest p-value search, for comparison."""

    def lower(alpha: float) -> float:
        return pe - sequential.halfwidth_one_sided(se, n, alpha, rho)

    low, high = 1e-5, 0.4999
    if lower(low) > 0:
        return low
    if lower(high) < 0:
        return high
    alpha = 0.5 * (low + high)
    for _ in range(100):
        diff = lower(alpha)
        if diff < 0:
            low = alpha
        else:
            high = alpha
        alpha = 0.5 * (low + high)
        if abs(diff) < 1e-6:
            break
    return alpha


def test_one_sided_p_value_is_the_exact_root_gbstats_bisects_for() -> None:
    result = sequential_test(CONTROL, TREATMENT, difference="absolute", alternative="greater")
    est = result.estimate
    n = est.control_n + est.treatment_n
    rho = sequential.rho(0.05, 5000, two_sided=False)
    # gbstats' published p-value (0.46316491943359384) is its bisection's stopping point ...
    assert _gbstats_bisection(est.effect, est.std_error, n, rho) == 0.46316491943359384
    # ... while ours is the closed-form root: the bound sits exactly on 0 at that level.
    assert r5(result.p_value) == 0.46305
    at_p = est.effect - sequential.halfwidth_one_sided(est.std_error, n, result.p_value, rho)
    assert abs(at_p) < 1e-12


@pytest.mark.parametrize(
    ("alternative", "difference"),
    [("greater", "relative"), ("less", "relative"), ("less", "absolute")],
)
def test_one_sided_p_value_where_gbstats_reports_its_bracket_end(
    alternative: Any, difference: Any
) -> None:
    # gbstats reports 0.4999 here (its bisection bracket); the exact value is above it.
    result = sequential_test(CONTROL, TREATMENT, difference=difference, alternative=alternative)
    assert 0.4999 < result.p_value <= 1.0
    if alternative == "less":  # the effect points the other way: no evidence at all
        assert result.p_value == 1.0


def test_tuning_parameter_is_tightest_near_the_sample_size() -> None:
    widths = {
        tuning: sequential_test(CONTROL, TREATMENT, tuning=tuning).ci
        for tuning in (10.0, 6461.0, 10_000.0)
    }
    width = {k: v[1] - v[0] for k, v in widths.items()}
    assert width[6461.0] < width[10_000.0] < width[10.0]


def test_confidence_sequence_is_wider_than_fixed_interval() -> None:
    fixed = fixed_horizon_test(CONTROL, TREATMENT)
    seq = sequential_test(CONTROL, TREATMENT)
    assert seq.ci[0] < fixed.ci[0] and seq.ci[1] > fixed.ci[1]
    assert seq.p_value >= fixed.p_value


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.1, 0.15, 0.3])
def test_two_sided_p_value_and_sequence_agree(shift: float) -> None:
    treatment = MeanStats(20_000, 20_000 * (1.0 + shift), 20_000 * ((1.0 + shift) ** 2 + 4.0))
    control = MeanStats(20_000, 20_000.0, 20_000 * 5.0)
    result = sequential_test(control, treatment, difference="absolute")
    excludes_zero = result.ci[0] > 0 or result.ci[1] < 0
    assert excludes_zero == (result.p_value < 0.05)
    assert 0.0 <= result.p_value <= 1.0


def test_p_value_at_alpha_puts_the_bound_on_zero() -> None:
    estimate = estimate_effect(
        MeanStats(20_000, 20_000.0, 100_000.0),
        MeanStats(20_000, 22_400.0, 20_000 * (1.12**2 + 4.0)),
        "absolute",
    )
    n = estimate.control_n + estimate.treatment_n
    rho = sequential.rho(0.05, 5000, two_sided=True)
    p = sequential.p_value_two_sided(estimate.effect, estimate.std_error, n, rho)
    assert 0.0 < p < 0.05
    half = sequential.halfwidth_two_sided(estimate.std_error, n, p, rho)
    assert math.isclose(half, abs(estimate.effect), rel_tol=1e-12)


def test_one_sided_sequential_needs_alpha_below_half() -> None:
    with pytest.raises(StatisticsError) as info:
        sequential_test(CONTROL, TREATMENT, alternative="greater", alpha=0.5)
    assert info.value.field == "alpha"


def test_tuning_must_be_positive() -> None:
    with pytest.raises(StatisticsError) as info:
        sequential_test(CONTROL, TREATMENT, tuning=0.0)
    assert info.value.field == "sequential_tuning"
