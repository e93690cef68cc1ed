r"""Asymptotic confidence sequences for always-valid experiment monitoring.

Implements the asymptotic confidence sequences of Waudby-Smith, Arnold, Wu, Howard, Ramdas
et al., "Time-uniform central limit theory and asymptotic confidence sequences"
(arXiv:2103.06476), as GrowthBook's ``gbstats`` uses them (``SequentialTwoSidedTTest`` and
the one-sided variants).  A confidence sequence covers the true effect at *every* sample size
simultaneously with probability ``1 - alpha``, so results may be looked at as often as
wanted without inflating the false-positive rate.

Notation: ``N = n_control + n_treatment`` units so far, ``effect`` and ``se`` the effect
estimate and its standard error (:mod:`ab.statistics`), ``s2 = se**2 * N`` the per-unit
variance scale, and ``N*`` the tuning parameter -- the total sample size at which the
sequence is tightest (default 5000).

Mixing parameter (two-sided uses ``a = alpha``, one-sided ``a = 2 alpha``)::

    rho = sqrt((-2 ln a + ln(-2 ln a + 1)) / N*)

Two-sided half-width (paper eq. for the normal-mixture boundary)::

    hw = sqrt(s2) * sqrt(2 (N rho**2 + 1) / (N**2 rho**2) * ln(sqrt(N rho**2 + 1) / alpha))

One-sided half-width (``greater``: ``[effect - hw, inf)``; ``less``: ``(-inf, effect + hw]``)::

    hw = sqrt(s2 * 2 (N rho**2 + 1) / (N rho)**2 * ln(1 + sqrt(N rho**2 + 1) / (2 alpha)))

Always-valid p-values, with ``E = rho**2 N effect**2 / (2 se**2 (N rho**2 + 1))``:

* two-sided (paper eq. 155, gbstats' reparameterisation)::

      p = min(1, sqrt(N rho**2 + 1) * exp(-E))

* one-sided: the smallest ``alpha'`` (``rho`` held at its design value) whose one-sided
  sequence excludes 0, solved in closed form::

      p = min(1, sqrt(N rho**2 + 1) / (2 (exp(E) - 1)))   if the effect points the
                                                          alternative's way, else 1

  gbstats finds the same root by bisection on ``[1e-5, 0.4999]`` with a tolerance of 1e-6
  on the interval bound, so its one-sided sequential p-values differ from the exact root by
  up to ~1e-4 and are clamped to that bracket (it reports 0.4999 where the exact value is
  larger or the effect points the other way).  The intervals agree exactly.
"""

from __future__ import annotations

import math
from typing import Literal


def rho(alpha: float, tuning: float, *, two_sided: bool) -> float:
    """Mixing parameter that makes the sequence tightest at ``tuning`` total units."""
    a = alpha if two_sided else 2.0 * alpha
    log_term = -2.0 * math.log(a)
    return math.sqrt((log_term + math.log(log_term + 1.0)) / tuning)


def halfwidth_two_sided(se: float, n_total: int, alpha: float, rho_: float) -> float:
    """Half-width of the two-sided ``1 - alpha`` confidence sequence."""
    s2 = se * se * n_total
    nr2 = n_total * rho_ * rho_
    return math.sqrt(s2) * math.sqrt(
        2.0 * (nr2 + 1.0) * math.log(math.sqrt(nr2 + 1.0) / alpha) / (n_total * rho_) ** 2
    )


def halfwidth_one_sided(se: float, n_total: int, alpha: float, rho_: float) -> float:
    """Distance from the estimate to the finite bound of the one-sided sequence."""
    s2 = se * se * n_total
    nr2 = n_total * rho_ * rho_
    return math.sqrt(
        s2
        * 2.0
        * (nr2 + 1.0)
        / (n_total * rho_) ** 2
        * math.log(1.0 + math.sqrt(nr2 + 1.0) / (2.0 * alpha))
    )


def _exponent(effect: float, se: float, n_total: int, rho_: float) -> float:
    nr2 = n_total * rho_ * rho_
    return nr2 * effect * effect / (2.0 * se * se * (nr2 + 1.0))


def p_value_two_sided(effect: float, se: float, n_total: int, rho_: float) -> float:
    """Always-valid two-sided p-value (inverse of the mixture e-value), capped at 1."""
    nr2 = n_total * rho_ * rho_
    return min(1.0, math.sqrt(nr2 + 1.0) * math.exp(-_exponent(effect, se, n_total, rho_)))


def p_value_one_sided(
    effect: float,
    se: float,
    n_total: int,
    rho_: float,
    alternative: Literal["greater", "less"],
) -> float:
    """Always-valid one-sided p-value: the level at which the sequence's bound reaches 0."""
    favourable = effect > 0.0 if alternative == "greater" else effect < 0.0
    if not favourable:
        return 1.0
    exponent = _exponent(effect, se, n_total, rho_)
    if exponent == 0.0:
        return 1.0
    nr2 = n_total * rho_ * rho_
    # sqrt(.) / (2 (e^E - 1)) rewritten with e^-E so that a huge E gives 0, not overflow.
    value = 0.5 * math.sqrt(nr2 + 1.0) * math.exp(-exponent) / -math.expm1(-exponent)
    return min(1.0, value)
