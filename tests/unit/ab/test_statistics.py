"""Fixed-horizon tests of ab.statistics against independent references.

Two kinds of reference, both compared at five decimals:

* GrowthBook gbstats' published vectors (``packages/stats/tests/frequentist/test_tests.py``),
  which are themselves rounded to five decimals;
* scipy / statsmodels run on raw per-user data generated with a fixed seed, from which the
  sufficient statistics given to ab.statistics are computed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats as sps
from statsmodels.stats.proportion import confint_proportions_2indep
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from ab.statistics import (
    CupedStats,
    InvalidStatisticsError,
    MeanStats,
    Moments,
    ProportionStats,
    RatioStats,
    StatisticsError,
    UndefinedEffectError,
    cuped_theta,
    estimate_effect,
    fixed_horizon_test,
)

DECIMALS = 5
TOLERANCE = 0.5 * 10.0**-DECIMALS

FloatArray = npt.NDArray[np.float64]

# gbstats test_tests.py fixtures
GB_CONTROL = MeanStats(n=3407, sum=1396.87, sum_squares=52377.9767)
GB_TREATMENT = MeanStats(n=3461, sum=2422.7, sum_squares=134698.29)
GB_CONTROL_3000 = MeanStats(n=3000, sum=1396.87, sum_squares=52377.9767)


def r5(x: float) -> float:
    """Round like gbstats' tests do."""
    return round(x, DECIMALS)


def close(actual: float, expected: float) -> bool:
    """Agreement to five decimals with an unrounded reference."""
    return abs(actual - expected) < TOLERANCE


def mean_stats(x: FloatArray) -> MeanStats:
    return MeanStats(n=len(x), sum=float(x.sum()), sum_squares=float((x * x).sum()))


@pytest.fixture(scope="module")
def revenue() -> tuple[FloatArray, FloatArray]:
    """Skewed per-user revenue, treatment 4% higher."""
    rng = np.random.default_rng(7)
    control = rng.gamma(shape=0.8, scale=12.0, size=4000)
    treatment = rng.gamma(shape=0.8, scale=12.5, size=4300)
    return control, treatment


# ---------------------------------------------------------------- gbstats vectors


def test_two_sided_relative_matches_gbstats() -> None:
    result = fixed_horizon_test(GB_CONTROL, GB_TREATMENT)
    assert r5(result.effect) == 0.70732
    assert (r5(result.ci[0]), r5(result.ci[1])) == (-0.03526, 1.44989)
    assert r5(result.std_error) == 0.37879
    assert r5(result.p_value) == 0.06191


def test_two_sided_absolute_matches_gbstats() -> None:
    result = fixed_horizon_test(GB_CONTROL, GB_TREATMENT, difference="absolute")
    assert r5(result.effect) == 0.29
    assert (r5(result.ci[0]), r5(result.ci[1])) == (0.04538, 0.53462)
    assert r5(result.std_error) == 0.12478
    assert r5(result.p_value) == 0.02016


def test_two_sided_proportion_matches_gbstats() -> None:
    result = fixed_horizon_test(ProportionStats(n=28, sum=14), ProportionStats(n=30, sum=16))
    assert r5(result.effect) == r5((16 / 30 - 0.5) / 0.5)
    assert (r5(result.ci[0]), r5(result.ci[1])) == (-0.47767, 0.61101)
    assert r5(result.std_error) == 0.2717
    assert r5(result.p_value) == 0.80707


@pytest.mark.parametrize(
    ("alternative", "difference", "effect", "se", "bound", "p_value"),
    [
        # gbstats TestOneSidedGreaterTTest / TestOneSidedLesserTTest (unrounded vectors)
        (
            "greater",
            "relative",
            0.5033610858562358,
            0.3334122146400735,
            -0.045136675850396046,
            0.06558262868467746,
        ),
        (
            "greater",
            "absolute",
            0.23437666666666668,
            0.12983081254184736,
            0.020791480063255735,
            0.03554272489873023,
        ),
        (
            "less",
            "relative",
            0.5033610858562358,
            0.3334122146400735,
            1.0518588475628676,
            0.9344173713153225,
        ),
        (
            "less",
            "absolute",
            0.23437666666666668,
            0.12983081254184736,
            0.44796185327007765,
            0.9644572751012698,
        ),
    ],
)
def test_one_sided_matches_gbstats(
    alternative: Any, difference: Any, effect: float, se: float, bound: float, p_value: float
) -> None:
    result = fixed_horizon_test(
        GB_CONTROL_3000, GB_TREATMENT, difference=difference, alternative=alternative
    )
    assert close(result.effect, effect)
    assert close(result.std_error, se)
    assert close(result.p_value, p_value)
    if alternative == "greater":
        assert close(result.ci[0], bound)
        assert result.ci[1] == math.inf
    else:
        assert result.ci[0] == -math.inf
        assert close(result.ci[1], bound)


# ---------------------------------------------------------------- raw-data references


@pytest.mark.parametrize(
    ("alternative", "scipy_alt", "sm_alt"),
    [("two-sided", "two-sided", "two-sided"), ("greater", "greater", "larger")],
)
def test_absolute_mean_matches_scipy_and_statsmodels_welch(
    revenue: tuple[FloatArray, FloatArray], alternative: Any, scipy_alt: str, sm_alt: str
) -> None:
    control, treatment = revenue
    result = fixed_horizon_test(
        mean_stats(control), mean_stats(treatment), difference="absolute", alternative=alternative
    )
    welch = sps.ttest_ind(treatment, control, equal_var=False, alternative=scipy_alt)
    compare = CompareMeans(DescrStatsW(treatment), DescrStatsW(control))
    _, _, sm_df = compare.ttest_ind(usevar="unequal")
    low, high = compare.tconfint_diff(alpha=0.05, usevar="unequal", alternative=sm_alt)

    assert close(result.effect, float(treatment.mean() - control.mean()))
    assert close(result.effect / result.std_error, float(welch.statistic))
    assert close(result.p_value, float(welch.pvalue))
    assert close(result.estimate.df, float(sm_df))
    assert close(result.ci[0], float(low))
    assert close(result.ci[1], float(high)) or result.ci[1] == high == math.inf


def test_relative_mean_matches_delta_method_by_hand(
    revenue: tuple[FloatArray, FloatArray],
) -> None:
    control, treatment = revenue
    result = fixed_horizon_test(mean_stats(control), mean_stats(treatment))

    m_c, m_t = control.mean(), treatment.mean()
    v_c, v_t = control.var(ddof=1), treatment.var(ddof=1)
    se = math.sqrt(v_t / (len(treatment) * m_c**2) + v_c * m_t**2 / (len(control) * m_c**4))
    df = (v_t / len(treatment) + v_c / len(control)) ** 2 / (
        (v_t / len(treatment)) ** 2 / (len(treatment) - 1)
        + (v_c / len(control)) ** 2 / (len(control) - 1)
    )
    effect = (m_t - m_c) / m_c
    half = sps.t.ppf(0.975, df) * se
    assert close(result.effect, effect)
    assert close(result.std_error, se)
    assert close(result.p_value, 2 * sps.t.sf(abs(effect / se), df))
    assert close(result.ci[0], effect - half)
    assert close(result.ci[1], effect + half)


def test_relative_effect_divides_by_absolute_control_mean() -> None:
    control = MeanStats(n=100, sum=-200.0, sum_squares=900.0)
    treatment = MeanStats(n=100, sum=-150.0, sum_squares=700.0)
    result = fixed_horizon_test(control, treatment)
    assert close(result.effect, (-1.5 - -2.0) / 2.0)  # an improvement stays positive


def test_proportion_matches_scipy_and_statsmodels_wald() -> None:
    rng = np.random.default_rng(11)
    n_c, n_t = 50_000, 49_000
    conv_c = int(rng.binomial(n_c, 0.030))
    conv_t = int(rng.binomial(n_t, 0.0325))
    result = fixed_horizon_test(
        ProportionStats(n_c, conv_c), ProportionStats(n_t, conv_t), difference="absolute"
    )
    p_c, p_t = conv_c / n_c, conv_t / n_t
    # gbstats' per-arm variance is p(1-p), i.e. a standard deviation of sqrt(p(1-p)).
    welch = sps.ttest_ind_from_stats(
        p_t, math.sqrt(p_t * (1 - p_t)), n_t, p_c, math.sqrt(p_c * (1 - p_c)), n_c, False
    )
    low, high = confint_proportions_2indep(conv_t, n_t, conv_c, n_c, method="wald")
    assert close(result.effect, p_t - p_c)
    assert close(result.effect / result.std_error, float(welch.statistic))
    assert close(result.p_value, float(welch.pvalue))
    assert close(result.ci[0], float(low))
    assert close(result.ci[1], float(high))


def _ratio_data(seed: int, ctr: float) -> tuple[FloatArray, FloatArray]:
    """Impressions and clicks per user; users are the randomisation unit."""
    rng = np.random.default_rng(seed)
    impressions = rng.poisson(rng.gamma(2.0, 10.0, size=3000)).astype(np.float64) + 1.0
    clicks = rng.binomial(impressions.astype(np.int64), ctr).astype(np.float64)
    return clicks, impressions


def _ratio_stats(clicks: FloatArray, impressions: FloatArray) -> RatioStats:
    return RatioStats(
        n=len(clicks),
        numerator=Moments(float(clicks.sum()), float((clicks * clicks).sum())),
        denominator=Moments(float(impressions.sum()), float((impressions**2).sum())),
        sum_products=float((clicks * impressions).sum()),
    )


def _linearised(clicks: FloatArray, impressions: FloatArray) -> FloatArray:
    """Per-user values whose mean is the ratio and whose variance is its delta-method one.

    The ratio r = sum(clicks) / sum(impressions) is linearised per user as
    r + (clicks - r * impressions) / mean(impressions); the correction term has mean 0.
    """
    r = clicks.sum() / impressions.sum()
    out: FloatArray = r + (clicks - r * impressions) / impressions.mean()
    return out


def test_ratio_matches_welch_on_linearised_data() -> None:
    clicks_c, imp_c = _ratio_data(3, 0.050)
    clicks_t, imp_t = _ratio_data(4, 0.053)
    result = fixed_horizon_test(
        _ratio_stats(clicks_c, imp_c), _ratio_stats(clicks_t, imp_t), difference="absolute"
    )
    lin_c, lin_t = _linearised(clicks_c, imp_c), _linearised(clicks_t, imp_t)
    welch = sps.ttest_ind(lin_t, lin_c, equal_var=False)
    low, high = CompareMeans(DescrStatsW(lin_t), DescrStatsW(lin_c)).tconfint_diff(usevar="unequal")
    ratio_c = clicks_c.sum() / imp_c.sum()
    ratio_t = clicks_t.sum() / imp_t.sum()
    assert close(result.estimate.control_mean, float(ratio_c))
    assert close(result.effect, float(ratio_t - ratio_c))
    assert close(result.p_value, float(welch.pvalue))
    assert close(result.ci[0], float(low))
    assert close(result.ci[1], float(high))


def test_ratio_relative_uses_per_unit_variance_with_covariance() -> None:
    clicks_c, imp_c = _ratio_data(5, 0.050)
    clicks_t, imp_t = _ratio_data(6, 0.050)
    stats_c = _ratio_stats(clicks_c, imp_c)
    result = fixed_horizon_test(stats_c, _ratio_stats(clicks_t, imp_t))

    # hand calculation: variance_of_ratios with np.cov (ddof=1) covariances
    cov = np.cov(clicks_c, imp_c, ddof=1)
    mm, md = clicks_c.mean(), imp_c.mean()
    per_unit = cov[0, 0] / md**2 + cov[1, 1] * mm**2 / md**4 - 2 * cov[0, 1] * mm / md**3
    assert close(stats_c.variance, float(per_unit))
    assert close(stats_c.variance, float(_linearised(clicks_c, imp_c).var(ddof=1)))
    lin_t = _linearised(clicks_t, imp_t)
    r_c, r_t = stats_c.mean, float(clicks_t.sum() / imp_t.sum())
    se = math.sqrt(lin_t.var(ddof=1) / len(lin_t) / r_c**2 + per_unit * r_t**2 / 3000 / r_c**4)
    assert close(result.std_error, se)
    assert close(result.effect, (r_t - r_c) / r_c)


# ---------------------------------------------------------------- CUPED


@pytest.fixture(scope="module")
def cuped_data() -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Pre-period spend predicts in-experiment spend; treatment adds 0.3."""
    rng = np.random.default_rng(19)
    pre_c = rng.gamma(2.0, 5.0, size=3000)
    pre_t = rng.gamma(2.0, 5.0, size=3200)
    post_c = 0.8 * pre_c + rng.normal(0.0, 3.0, size=3000) + 2.0
    post_t = 0.8 * pre_t + rng.normal(0.0, 3.0, size=3200) + 2.3
    return post_c, pre_c, post_t, pre_t


def _cuped(post: FloatArray, pre: FloatArray) -> CupedStats:
    return CupedStats(
        post=mean_stats(post), pre=mean_stats(pre), sum_products_pre=float((post * pre).sum())
    )


def test_cuped_absolute_matches_welch_on_adjusted_data(
    cuped_data: tuple[FloatArray, FloatArray, FloatArray, FloatArray],
) -> None:
    post_c, pre_c, post_t, pre_t = cuped_data
    control, treatment = _cuped(post_c, pre_c), _cuped(post_t, pre_t)
    result = fixed_horizon_test(control, treatment, difference="absolute")

    post_all, pre_all = np.concatenate([post_c, post_t]), np.concatenate([pre_c, pre_t])
    theta = np.cov(post_all, pre_all, ddof=1)[0, 1] / pre_all.var(ddof=1)  # pooled, as gbstats
    adj_c, adj_t = post_c - theta * pre_c, post_t - theta * pre_t
    welch = sps.ttest_ind(adj_t, adj_c, equal_var=False)
    low, high = CompareMeans(DescrStatsW(adj_t), DescrStatsW(adj_c)).tconfint_diff(usevar="unequal")
    assert result.estimate.cuped
    assert result.estimate.theta is not None
    assert close(result.estimate.theta, float(theta))
    assert close(result.effect, float(adj_t.mean() - adj_c.mean()))
    assert close(result.p_value, float(welch.pvalue))
    assert close(result.ci[0], float(low))
    assert close(result.ci[1], float(high))
    unadjusted = fixed_horizon_test(mean_stats(post_c), mean_stats(post_t), difference="absolute")
    assert result.std_error < 0.6 * unadjusted.std_error


def test_cuped_relative_divides_by_unadjusted_control_mean(
    cuped_data: tuple[FloatArray, FloatArray, FloatArray, FloatArray],
) -> None:
    post_c, pre_c, post_t, pre_t = cuped_data
    control, treatment = _cuped(post_c, pre_c), _cuped(post_t, pre_t)
    theta = cuped_theta(control, treatment)
    estimate = estimate_effect(control, treatment, "relative")
    adjusted_diff = (post_t.mean() - theta * pre_t.mean()) - (post_c.mean() - theta * pre_c.mean())
    assert close(estimate.effect, float(adjusted_diff / post_c.mean()))
    assert close(estimate.control_mean, float(post_c.mean()))

    # delta method by hand, gradient of (a_t - a_c) / u_c w.r.t. (u_t, x_t, u_c, x_c)
    u_c, u_t = post_c.mean(), post_t.mean()
    cov_c, cov_t = np.cov(post_c, pre_c, ddof=1), np.cov(post_t, pre_t, ddof=1)
    g_t = np.array([1 / u_c, -theta / u_c])
    g_c = np.array([-u_t / u_c**2, theta / u_c])
    variance = g_t @ cov_t @ g_t / len(post_t) + g_c @ cov_c @ g_c / len(post_c)
    assert close(estimate.std_error, math.sqrt(float(variance)))


def test_cuped_proportion_theta_uses_population_moments() -> None:
    rng = np.random.default_rng(23)
    pre = rng.binomial(1, 0.2, size=(2, 5000)).astype(np.float64)
    post = np.where(
        pre == 1, rng.binomial(1, 0.5, size=pre.shape), rng.binomial(1, 0.1, size=pre.shape)
    ).astype(np.float64)
    arms = [
        CupedStats(
            post=ProportionStats(5000, float(post[i].sum())),
            pre=ProportionStats(5000, float(pre[i].sum())),
            sum_products_pre=float((post[i] * pre[i]).sum()),
        )
        for i in range(2)
    ]
    flat_post, flat_pre = post.ravel(), pre.ravel()
    expected = np.cov(flat_post, flat_pre, ddof=0)[0, 1] / flat_pre.var(ddof=0)
    assert close(cuped_theta(arms[0], arms[1]), float(expected))
    result = fixed_horizon_test(arms[0], arms[1], difference="absolute")
    assert result.estimate.cuped


def test_cuped_without_pre_variance_reverts_to_unadjusted() -> None:
    control = CupedStats(MeanStats(100, 50.0, 80.0), MeanStats(100, 100.0, 100.0), 50.0)
    treatment = CupedStats(MeanStats(100, 60.0, 90.0), MeanStats(100, 100.0, 100.0), 60.0)
    result = fixed_horizon_test(control, treatment)
    plain = fixed_horizon_test(control.post, treatment.post)
    assert not result.estimate.cuped
    assert result.estimate.theta is None
    assert result == plain


# ---------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: MeanStats(1, 1.0, 1.0), "n"),
        (lambda: MeanStats(10, 100.0, 10.0), "sum_squares"),
        (lambda: MeanStats(10, math.nan, 10.0), "sum"),
        (lambda: ProportionStats(10, 11.0), "sum"),
        (lambda: ProportionStats(10, -1.0), "sum"),
        (
            lambda: RatioStats(10, Moments(10.0, 20.0), Moments(20.0, 50.0), 1000.0),
            "sum_products",
        ),
        (
            lambda: RatioStats(10, Moments(10.0, 20.0), Moments(0.0, 5.0), 1.0),
            "denominator.sum",
        ),
        (
            lambda: RatioStats(10, Moments(10.0, 2.0), Moments(20.0, 50.0), 1.0),
            "numerator.sum_squares",
        ),
        (
            lambda: CupedStats(MeanStats(10, 10.0, 20.0), MeanStats(11, 10.0, 20.0), 20.0),
            "pre.n",
        ),
    ],
)
def test_impossible_statistics_are_rejected_with_the_field(build: Any, field: str) -> None:
    with pytest.raises(InvalidStatisticsError) as info:
        build()
    assert info.value.field == field


def test_floating_point_cancellation_is_not_a_negative_variance() -> None:
    values = np.full(7, 3.3)  # sum_squares - sum**2 / n rounds to -1.4e-14
    stats = mean_stats(values)
    assert stats.sum_squares - stats.sum**2 / stats.n < 0.0
    assert stats.variance == 0.0


def test_arms_of_different_kinds_are_rejected() -> None:
    with pytest.raises(InvalidStatisticsError, match="treatment"):
        fixed_horizon_test(MeanStats(10, 5.0, 5.0), ProportionStats(10, 5.0))


def test_zero_variance_arm_makes_the_test_undefined() -> None:
    with pytest.raises(UndefinedEffectError) as info:
        fixed_horizon_test(ProportionStats(100, 0.0), ProportionStats(100, 3.0))
    assert info.value.field == "control"


def test_zero_control_mean_makes_only_the_relative_effect_undefined() -> None:
    control = MeanStats(10, 0.0, 10.0)
    treatment = MeanStats(10, 5.0, 12.0)
    with pytest.raises(UndefinedEffectError, match="mean is zero"):
        fixed_horizon_test(control, treatment)
    assert fixed_horizon_test(control, treatment, difference="absolute").effect == 0.5


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, math.nan])
def test_alpha_outside_unit_interval_is_rejected(alpha: float) -> None:
    with pytest.raises(StatisticsError) as info:
        fixed_horizon_test(GB_CONTROL, GB_TREATMENT, alpha=alpha)
    assert info.value.field == "alpha"


# ---------------------------------------------------------------- chance to win


def test_chance_to_win_is_one_minus_the_one_sided_p_value() -> None:
    two_sided = fixed_horizon_test(GB_CONTROL, GB_TREATMENT)
    greater = fixed_horizon_test(GB_CONTROL, GB_TREATMENT, alternative="greater")
    assert two_sided.chance_to_win == pytest.approx(1.0 - greater.p_value, abs=1e-12)
    assert greater.chance_to_win == two_sided.chance_to_win  # whatever the alternative
    reverse = fixed_horizon_test(GB_TREATMENT, GB_CONTROL, difference="absolute")
    forward = fixed_horizon_test(GB_CONTROL, GB_TREATMENT, difference="absolute")
    assert reverse.chance_to_win == pytest.approx(1.0 - forward.chance_to_win, abs=1e-12)


def test_chance_to_win_matches_beta_posteriors_on_conversions() -> None:
    # Uniform priors, Beta posteriors, P(p_t > p_c) by simulation: the normal approximation
    # agrees at these sample sizes.
    control, treatment = ProportionStats(n=5000, sum=400), ProportionStats(n=5100, sum=445)
    result = fixed_horizon_test(control, treatment, difference="absolute")
    rng = np.random.default_rng(3)
    draws_c = rng.beta(1 + 400, 1 + 5000 - 400, size=400_000)
    draws_t = rng.beta(1 + 445, 1 + 5100 - 445, size=400_000)
    assert result.chance_to_win == pytest.approx(float(np.mean(draws_t > draws_c)), abs=0.01)
    assert 0.5 < result.chance_to_win < 1.0
