r"""Corrections for testing several metrics (or arms) in one experiment.

For ``m`` p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted p-values are
(each capped at 1, then mapped back to the input order):

* Holm (family-wise error rate, valid under any dependence)::

      q_(i) = max_{j <= i} (m - j + 1) p_(j)

* Benjamini-Hochberg (false discovery rate, independent or positively dependent tests)::

      q_(i) = min_{j >= i} m p_(j) / j

A metric is significant after correction when its adjusted p-value is below alpha.  These
agree with ``statsmodels.stats.multitest.multipletests`` (methods ``holm`` and ``fdr_bh``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, TypeAlias

import numpy as np

Correction: TypeAlias = Literal["holm", "benjamini-hochberg"]


def adjust_p_values(p_values: Sequence[float], method: Correction) -> tuple[float, ...]:
    """Adjusted p-values, in the order given.

    Raises:
        ValueError: a p-value outside [0, 1] or not a number.
    """
    for i, value in enumerate(p_values):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"p_values.{i}: must lie in [0, 1]")
    m = len(p_values)
    if m == 0:
        return ()
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    rank = np.arange(1, m + 1, dtype=np.float64)
    if method == "holm":
        adjusted = np.maximum.accumulate((m - rank + 1.0) * ranked)
    else:
        adjusted = np.minimum.accumulate((m * ranked / rank)[::-1])[::-1]
    out = np.empty(m, dtype=np.float64)
    out[order] = np.minimum(adjusted, 1.0)
    return tuple(float(x) for x in out)
