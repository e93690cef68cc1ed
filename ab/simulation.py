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
