r"""Sample-ratio mismatch (SRM): did the arms receive the traffic they were configured to?

Pearson's chi-square goodness-of-fit test of the observed users per arm ``o_i`` against the
configured weights ``w_i`` (normalised to shares), as in gbstats' ``check_srm``::

    e_i  = w_i / sum(w) * sum(o)
    X**2 = sum_i (o_i - e_i)**2 / e_i
    p    = P(chi2_{k-1} > X**2)

computed by ``scipy.stats.chisquare``; this module turns weights into expected counts and
checks the input.  A tiny p-value (GrowthBook warns below 0.001) means assignment or exposure
logging is broken and the experiment's metric results should not be trusted.  With no users
yet, p = 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


class SrmInputError(ValueError):
    """Counts or weights that cannot be tested; ``field`` names the entry."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class SrmResult:
    """Outcome of the sample-ratio-mismatch test."""

    statistic: float
    """Pearson's chi-square statistic."""
    p_value: float
    """Probability of a mismatch at least this large if assignment works as configured."""
    df: int
    """Degrees of freedom: arms - 1."""
    observed: tuple[int, ...]
    """Users seen per arm."""
    expected: tuple[float, ...]
    """Users expected per arm from the weights."""


def srm_test(observed: Sequence[int], weights: Sequence[float] | None = None) -> SrmResult:
    """Chi-square test of observed users per arm against configured weights.

    Args:
        observed: users per arm, in arm order.
        weights: configured traffic weights per arm (any positive scale); equal if omitted.

    Raises:
        SrmInputError: fewer than two arms, mismatched lengths, negative counts or
            non-positive weights.
    """
    if len(observed) < 2:
        raise SrmInputError("observed", "must list at least two arms")
    shares = [1.0] * len(observed) if weights is None else list(weights)
    if len(shares) != len(observed):
        raise SrmInputError("weights", "must have one entry per arm in observed")
    for i, count in enumerate(observed):
        if count < 0:
            raise SrmInputError(f"observed.{i}", "must be non-negative")
    for i, weight in enumerate(shares):
        if not (math.isfinite(weight) and weight > 0.0):
            raise SrmInputError(f"weights.{i}", "must be a positive finite number")

    total = sum(observed)
    weight_total = math.fsum(shares)
    expected = tuple(w / weight_total * total for w in shares)
    df = len(observed) - 1
    if total == 0:
        return SrmResult(0.0, 1.0, df, tuple(observed), expected)
    # Imported on first use: scipy.stats takes seconds, and the gateway imports this module
    # through the experiment controller without ever testing.
    from scipy.stats import chisquare

    result = chisquare(observed, expected)
    return SrmResult(float(result.statistic), float(result.pvalue), df, tuple(observed), expected)
