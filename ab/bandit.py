"""Thompson sampling over experiment arms on conversion (decision_policy: bandit).

Each arm's conversion rate (purchases per click, the `conversion_rate` metric) gets a Beta
posterior from a uniform Beta(1, 1) prior::

    p_arm ~ Beta(1 + purchases, 1 + max(clicks - purchases, 0))

An arm's weight is the posterior probability that it is the best arm, estimated from `draws`
joint samples; then every arm is given at least `min_weight` (continued exploration)::

    w_arm = min_weight + (1 - k min_weight) * P(arm is best)

The routing table applies these weights like any override, so they change the traffic split
(and move users between arms as buckets change owner); exposures log each arm's share as
`assignment_probability` for off-policy evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def thompson_weights(
    successes: Mapping[str, float],
    trials: Mapping[str, float],
    arms: Sequence[str],
    *,
    rng: np.random.Generator,
    draws: int = 10_000,
    min_weight: float = 0.0,
) -> dict[str, float]:
    """Traffic weights per arm, in `arms` order, summing to 1.

    Args:
        successes: conversions per arm (missing: 0).
        trials: opportunities per arm (missing: 0); successes beyond trials count as trials.
        arms: the arms, in config order.
        rng: the random generator (seed it for reproducible weights).
        draws: joint posterior samples.
        min_weight: the least weight an arm keeps; `len(arms) * min_weight` must stay below 1.

    Raises:
        ValueError: fewer than two arms, or a floor that leaves no room.
    """
    if len(arms) < 2:
        raise ValueError("arms: need at least two")
    if not 0.0 <= min_weight * len(arms) < 1.0:
        raise ValueError("min_weight: the arms' floors must sum to less than 1")
    alpha = np.array([1.0 + max(float(successes.get(a, 0.0)), 0.0) for a in arms])
    failures = [max(float(trials.get(a, 0.0)) - float(successes.get(a, 0.0)), 0.0) for a in arms]
    beta = 1.0 + np.array(failures)
    samples = rng.beta(alpha, beta, size=(draws, len(arms)))
    wins = np.bincount(np.argmax(samples, axis=1), minlength=len(arms)) / draws
    weights = min_weight + (1.0 - len(arms) * min_weight) * wins
    return {a: float(w) for a, w in zip(arms, weights, strict=True)}
