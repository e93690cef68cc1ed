"""A/A simulations: how often does each test call a difference that does not exist?

Both arms draw per-user values from the same skewed (exponential, revenue-like) distribution,
so every "significant" result is a false positive.  Per-user data are generated in one
vectorised NumPy call; running sums at each look give the sufficient statistics that the
engine in :mod:`ab.statistics` sees in production.  Three rates are reported:

* ``fixed_horizon``: the Welch t-test once, at the planned end -- should be close to alpha;
* ``naive_peeking``: the same t-test at every look, stopping at the first p < alpha -- inflated;
* ``sequential_peeking``: the confidence-sequence test at every look -- stays at or below alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ab import statistics as _st


@dataclass(frozen=True, slots=True)
class AaSimulation:
    """False-positive rates of one A/A simulation."""

    experiments: int
    """Simulated experiments."""
    users_per_arm: int
    """Users per arm at the planned end."""
    looks: int
    """Equally spaced looks at the data, the last at the planned end."""
    alpha: float
    """Significance level of every test."""
    sequential_tuning: float
    """N* of the confidence sequence."""
    fixed_horizon: float
    """Share of experiments significant in one test at the end."""
    naive_peeking: float
    """Share significant at any look with the fixed-horizon test."""
    sequential_peeking: float
    """Share significant at any look with the sequential test."""


def simulate_aa(
    *,
    experiments: int = 2000,
    users_per_arm: int = 1000,
    looks: int = 10,
    alpha: float = 0.05,
    sequential_tuning: float = _st.DEFAULT_SEQUENTIAL_TUNING,
    seed: int = 20240601,
) -> AaSimulation:
    """Simulate A/A experiments and count false positives under each way of looking."""
    rng = np.random.default_rng(seed)
    values = rng.exponential(scale=1.0, size=(experiments, 2, users_per_arm))
    sums = np.cumsum(values, axis=2)
    squares = np.cumsum(values * values, axis=2)
    look_sizes = np.linspace(users_per_arm / looks, users_per_arm, looks).round().astype(int)

    fixed = naive = sequential = 0
    for e in range(experiments):
        naive_hit = sequential_hit = False
        for look, n in enumerate(look_sizes):
            i = n - 1
            control = _st.MeanStats(int(n), float(sums[e, 0, i]), float(squares[e, 0, i]))
            treatment = _st.MeanStats(int(n), float(sums[e, 1, i]), float(squares[e, 1, i]))
            estimate = _st.estimate_effect(control, treatment, "absolute")
            if not naive_hit or look == looks - 1:
                p_fixed = _st.t_test(estimate, "two-sided", alpha).p_value
                naive_hit = naive_hit or p_fixed < alpha
                if look == looks - 1:
                    fixed += p_fixed < alpha
            if not sequential_hit:
                result = _st.confidence_sequence_test(
                    estimate, "two-sided", alpha, sequential_tuning
                )
                sequential_hit = result.p_value < alpha
        naive += naive_hit
        sequential += sequential_hit

    return AaSimulation(
        experiments=experiments,
        users_per_arm=users_per_arm,
        looks=looks,
        alpha=alpha,
        sequential_tuning=sequential_tuning,
        fixed_horizon=fixed / experiments,
        naive_peeking=naive / experiments,
        sequential_peeking=sequential / experiments,
    )


@dataclass(frozen=True)
class PowerSimulation:
    """Measured power of the fixed-horizon test at the sample size the power analysis gives."""

    experiments: int
    baseline: float
    mde: float
    """True relative lift built into the treatment."""
    users_per_arm: int
    """From `ab.power.sample_size_proportion` for the planned power."""
    planned_power: float
    measured_power: float
    """Share of simulated experiments whose two-sided test rejected at alpha."""


def simulate_power(
    *,
    baseline: float = 0.03,
    mde: float = 0.05,
    alpha: float = 0.05,
    power: float = 0.8,
    experiments: int = 2000,
    seed: int = 20240602,
) -> PowerSimulation:
    """Conversions drawn per arm as Binomial(n, p) (the sufficient statistic of n Bernoulli
    users), treatment rate `baseline * (1 + mde)`, n from the power analysis; counts how often
    the absolute-difference Welch test finds the effect."""
    from ab.power import sample_size_proportion

    n = sample_size_proportion(baseline, mde, alpha=alpha, power=power).users_per_variant
    rng = np.random.default_rng(seed)
    control = rng.binomial(n, baseline, experiments)
    treatment = rng.binomial(n, baseline * (1 + mde), experiments)
    hits = sum(
        _st.fixed_horizon_test(
            _st.ProportionStats(n, float(c)),
            _st.ProportionStats(n, float(t)),
            difference="absolute",
            alpha=alpha,
        ).p_value
        < alpha
        for c, t in zip(control.tolist(), treatment.tolist(), strict=True)
    )
    return PowerSimulation(experiments, baseline, mde, n, power, hits / experiments)


@dataclass(frozen=True)
class CupedSimulation:
    """Interval widths with and without CUPED on data with a correlated pre-period."""

    experiments: int
    users_per_arm: int
    correlation: float
    """Correlation of each user's metric with their pre-period value."""
    mean_width_plain: float
    mean_width_cuped: float
    coverage_cuped: float
    """Share of CUPED intervals containing the true effect."""


def simulate_cuped(
    *,
    experiments: int = 500,
    users_per_arm: int = 1000,
    correlation: float = 0.7,
    effect: float = 0.3,
    alpha: float = 0.05,
    seed: int = 20240603,
) -> CupedSimulation:
    """Per-user pre-period values N(10, 3^2) and metrics correlated with them (same spread),
    treatment shifted by `effect`; absolute-difference intervals of the plain and the CUPED
    test."""
    rng = np.random.default_rng(seed)
    shape = (experiments, 2, users_per_arm)
    pre = rng.normal(10.0, 3.0, shape)
    noise = rng.normal(0.0, 3.0 * np.sqrt(1 - correlation**2), shape)
    post = 10.0 + correlation * (pre - 10.0) + noise
    post[:, 1, :] += effect
    plain, cuped, covered = [], [], 0
    for e in range(experiments):
        arms_plain, arms_cuped = [], []
        for arm in (0, 1):
            y, x = post[e, arm], pre[e, arm]
            metric = _st.MeanStats(users_per_arm, float(y.sum()), float((y * y).sum()))
            covariate = _st.MeanStats(users_per_arm, float(x.sum()), float((x * x).sum()))
            arms_plain.append(metric)
            arms_cuped.append(_st.CupedStats(metric, covariate, float((x * y).sum())))
        a = _st.fixed_horizon_test(*arms_plain, difference="absolute", alpha=alpha)
        b = _st.fixed_horizon_test(*arms_cuped, difference="absolute", alpha=alpha)
        plain.append(a.ci[1] - a.ci[0])
        cuped.append(b.ci[1] - b.ci[0])
        covered += b.ci[0] <= effect <= b.ci[1]
    return CupedSimulation(
        experiments,
        users_per_arm,
        correlation,
        float(np.mean(plain)),
        float(np.mean(cuped)),
        covered / experiments,
    )
