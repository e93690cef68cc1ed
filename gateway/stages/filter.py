"""Stage 5: drop candidates the user must not see: out of stock, recently seen, excluded."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gateway.stages.types import Candidates, Positions


def filter_candidates(
    candidates: Candidates,
    blocked: Positions,
    available: npt.NDArray[np.bool_] | None,
) -> Candidates:
    """Keeps candidates that are not in `blocked` and, when `available` is given, in stock.

    Args:
        candidates: the retrieved candidates.
        blocked: catalogue positions never to return (recently viewed, excluded, ...).
        available: per-catalogue-position availability, or None to skip the stock filter.
    """
    keep = ~np.isin(candidates.positions, blocked)
    if available is not None:
        keep &= available[candidates.positions]
    return candidates.take(keep)
