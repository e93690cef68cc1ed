"""Stage 5: drop candidates the user must not see: out of stock, recently seen, excluded."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from feature_service.kernels import keep_allowed
from gateway.stages.types import Candidates, Positions

_NO_STOCK_RULE = np.empty(0, dtype=np.bool_)


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
    keep = keep_allowed(
        candidates.positions,
        np.asarray(blocked, dtype=np.int32),
        _NO_STOCK_RULE if available is None else available,
        available is not None,
    )
    return candidates.take(keep)
