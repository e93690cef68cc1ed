r"""Corrections for testing several metrics (or arms) in one experiment.

For ``m`` p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted p-values are
(each capped at 1, then mapped back to the input order):

* Holm (family-wise error rate, valid under any dependence)::

      q_(i) = max_{j <= i} (m - j + 1) p_(j)

* Benjamini-Hochberg (false discovery rate, independent or positively dependent tests)::

      q_(i) = min_{j >= i} m p_(j) / j

A metric is significant after correction when its adjusted p-value is below alpha.  Both are
computed by ``statsmodels.stats.multitest.multipletests`` (methods ``holm`` and ``fdr_bh``);
this module names the methods as the experiment config does and checks the input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, TypeAlias

import numpy as np

Correction: TypeAlias = Literal["holm", "benjamini-hochberg"]

_STATSMODELS_METHOD: dict[str, str] = {"holm": "holm", "benjamini-hochberg": "fdr_bh"}


def adjust_p_values(p_values: Sequence[float], method: Correction) -> tuple[float, ...]:
    """Adjusted p-values, in the order given.

    Raises:
        ValueError: a p-value outside [0, 1] or not a number.
    """
    for i, value in enumerate(p_values):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"p_values.{i}: must lie in [0, 1]")
    if not p_values:
        return ()
    # Imported on first use: statsmodels pulls in scipy.stats (seconds), and the gateway
    # imports this module through the experiment controller without ever adjusting.
    from statsmodels.stats.multitest import multipletests

    adjusted = multipletests(
        np.asarray(p_values, dtype=np.float64), method=_STATSMODELS_METHOD[method]
    )[1]
    return tuple(float(x) for x in adjusted)
