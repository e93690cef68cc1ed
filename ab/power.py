r"""Power and sample size for two-arm tests of proportions and means.

Two equal arms of ``n`` users each, a two-sided test at level ``alpha`` and a *relative*
minimum detectable effect ``mde`` (0.05 = a 5% lift).  With ``delta`` the absolute effect and
``V`` the sum of the two arms' per-user variances under the alternative:

* proportions: ``p1 = baseline``, ``p2 = baseline * (1 + mde)``, ``delta = p2 - p1``,
  ``V = p1 (1 - p1) + p2 (1 - p2)`` (unpooled, as the Welch test in
  :mod:`ab.statistics` uses per-arm ``p (1 - p)``);
* means: ``delta = mde * |baseline_mean|``, ``V = 2 baseline_std**2`` (equal variances).

The power of the two-sided normal test with ``se = sqrt(V / n)`` counts both tails::

    power(n) = Phi(|delta| / se - z_{1-alpha/2}) + Phi(-|delta| / se - z_{1-alpha/2})

which is statsmodels' ``NormalIndPower`` with the standardised effect
``d = delta / sqrt(V / 2)`` and ``n`` users in each arm: this module computes power and solves
for the sample size with it (``power`` and ``solve_power``), and only turns baselines and
relative effects into ``d`` and checks the inputs.  The solved size is rounded up, so
``power(users_per_variant) >= target > power(users_per_variant - 1)``.  At the sample sizes
online experiments need, the t distribution's extra width is negligible.

Worked example -- the product brief says 10,000 users per variant detect a 5% relative lift on
a 3% click-through rate at alpha 0.05 and 80% power.  They do not::

    sample_size_proportion(0.03, 0.05).users_per_variant   # 207,935 users per variant
    power_proportion(0.03, 0.05, 10_000)                    # 0.094: a 9% chance to detect it
    minimum_detectable_effect_proportion(0.03, 10_000)      # 0.238: only a ~24% lift is seen
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal


class PowerInputError(ValueError):
    """A power or sample-size input outside its domain; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class SampleSize:
    """Users each arm needs to detect ``mde`` with the requested power."""

    metric: Literal["proportion", "mean"]
    """Kind of metric the calculation is for."""
    users_per_variant: int
    """Users in each of the two arms (rounded up)."""
    baseline: float
    """Control conversion rate, or control mean."""
    mde: float
    """Relative minimum detectable effect."""
    absolute_effect: float
    """The same effect in the metric's units."""
    alpha: float
    """Two-sided significance level."""
    power: float
    """Target probability of detecting the effect."""
    achieved_power: float
    """Power actually reached with ``users_per_variant`` users per arm."""

    @property
    def total_users(self) -> int:
        """Users across both arms."""
        return 2 * self.users_per_variant


def _check_level(field: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise PowerInputError(field, "must lie strictly between 0 and 1")


def _normal_ind_power() -> Any:
    # Imported on first use: statsmodels pulls in scipy.stats (seconds), and the gateway
    # imports this module through the experiment controller without ever computing power.
    from statsmodels.stats.power import NormalIndPower

    return NormalIndPower()


def _effect_size(delta: float, variance_sum: float) -> float:
    """Cohen's d of two equal arms: the absolute effect over the per-arm standard deviation."""
    return abs(delta) / math.sqrt(variance_sum / 2.0)


def _two_sided_power(delta: float, variance_sum: float, n: float, alpha: float) -> float:
    return float(
        _normal_ind_power().power(
            effect_size=_effect_size(delta, variance_sum),
            nobs1=n,
            alpha=alpha,
            ratio=1.0,
            alternative="two-sided",
        )
    )


def _solve_n(delta: float, variance_sum: float, alpha: float, power: float) -> float:
    """Exact (real-valued) users per arm at which the two-sided power equals ``power``."""
    return float(
        _normal_ind_power().solve_power(
            effect_size=_effect_size(delta, variance_sum),
            alpha=alpha,
            power=power,
            ratio=1.0,
            alternative="two-sided",
        )
    )


def _sample_size(
    metric: Literal["proportion", "mean"],
    baseline: float,
    mde: float,
    delta: float,
    variance_sum: float,
    alpha: float,
    power: float,
) -> SampleSize:
    n = max(2, math.ceil(_solve_n(delta, variance_sum, alpha, power)))
    while _two_sided_power(delta, variance_sum, n, alpha) < power:  # the solver's tolerance
        n += 1
    return SampleSize(
        metric=metric,
        users_per_variant=n,
        baseline=baseline,
        mde=mde,
        absolute_effect=delta,
        alpha=alpha,
        power=power,
        achieved_power=_two_sided_power(delta, variance_sum, n, alpha),
    )


def _proportion_inputs(baseline: float, mde: float) -> tuple[float, float]:
    _check_level("baseline", baseline)
    if not (math.isfinite(mde) and mde != 0.0):
        raise PowerInputError("mde", "must be a non-zero finite number")
    treated = baseline * (1.0 + mde)
    if not 0.0 < treated < 1.0:
        raise PowerInputError("mde", "moves the treated rate outside (0, 1)")
    delta = treated - baseline
    return delta, baseline * (1.0 - baseline) + treated * (1.0 - treated)


def _mean_inputs(baseline_mean: float, baseline_std: float, mde: float) -> tuple[float, float]:
    if not (math.isfinite(baseline_mean) and baseline_mean != 0.0):
        raise PowerInputError("baseline_mean", "must be a non-zero finite number")
    if not (math.isfinite(baseline_std) and baseline_std > 0.0):
        raise PowerInputError("baseline_std", "must be a positive finite number")
    if not (math.isfinite(mde) and mde != 0.0):
        raise PowerInputError("mde", "must be a non-zero finite number")
    return mde * abs(baseline_mean), 2.0 * baseline_std**2


def power_proportion(
    baseline: float, mde: float, users_per_variant: float, alpha: float = 0.05
) -> float:
    """Two-sided power to detect a relative lift ``mde`` on conversion rate ``baseline``."""
    _check_level("alpha", alpha)
    delta, variance_sum = _proportion_inputs(baseline, mde)
    return _two_sided_power(delta, variance_sum, users_per_variant, alpha)


def power_mean(
    baseline_mean: float,
    baseline_std: float,
    mde: float,
    users_per_variant: float,
    alpha: float = 0.05,
) -> float:
    """Two-sided power to detect a relative lift ``mde`` on a mean metric."""
    _check_level("alpha", alpha)
    delta, variance_sum = _mean_inputs(baseline_mean, baseline_std, mde)
    return _two_sided_power(delta, variance_sum, users_per_variant, alpha)


def sample_size_proportion(
    baseline: float, mde: float, *, alpha: float = 0.05, power: float = 0.8
) -> SampleSize:
    """Users per variant to detect a relative lift ``mde`` on conversion rate ``baseline``.

    For a 3% CTR, a 5% relative lift, alpha 0.05 and 80% power this is 207,935 users per
    variant -- about 21 times the 10,000 the product brief assumed.
    """
    _check_level("alpha", alpha)
    _check_level("power", power)
    delta, variance_sum = _proportion_inputs(baseline, mde)
    return _sample_size("proportion", baseline, mde, delta, variance_sum, alpha, power)


def sample_size_mean(
    baseline_mean: float,
    baseline_std: float,
    mde: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
) -> SampleSize:
    """Users per variant to detect a relative lift ``mde`` on a mean metric."""
    _check_level("alpha", alpha)
    _check_level("power", power)
    delta, variance_sum = _mean_inputs(baseline_mean, baseline_std, mde)
    return _sample_size("mean", baseline_mean, mde, delta, variance_sum, alpha, power)


def minimum_detectable_effect_proportion(
    baseline: float, users_per_variant: float, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest positive relative lift detectable with the given users per variant."""
    _check_level("baseline", baseline)
    _check_level("alpha", alpha)
    _check_level("power", power)
    if not (math.isfinite(users_per_variant) and users_per_variant >= 2):
        raise PowerInputError("users_per_variant", "must be at least 2")
    upper = (1.0 - 1e-9) / baseline - 1.0  # keeps the treated rate below 1

    def gap(mde: float) -> float:
        return power_proportion(baseline, mde, users_per_variant, alpha) - power

    if gap(upper) < 0.0:
        raise PowerInputError("users_per_variant", "too few users to reach the power at all")
    from scipy.optimize import brentq  # on first use, as statsmodels above

    # The treated rate's variance changes with the lift, so no standardised effect size can
    # be solved for directly: find the lift whose power is the target instead.
    return float(brentq(gap, 1e-12, upper, xtol=1e-15))


def users_per_variant_for_ctr(
    baseline_ctr: float = 0.03, mde: float = 0.05, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Users per variant for a click-through-rate test; 207,935 with the defaults.

    The defaults are the product brief's scenario (3% CTR, 5% relative lift, alpha 0.05,
    80% power), for which the brief claimed 10,000 users per variant.
    """
    return sample_size_proportion(baseline_ctr, mde, alpha=alpha, power=power).users_per_variant
