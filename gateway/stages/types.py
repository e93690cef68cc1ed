"""The typed values that flow between pipeline stages (NumPy arrays, never per-item dicts)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from feature_service.surfaces import Surface

Positions = npt.NDArray[np.int32]
"""Item positions in the catalogue arrays."""
Scores = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Where and when the recommendations are shown (validated)."""

    device: int
    """API `Device` number."""
    page: int
    """API `Page` number."""
    locale: str
    country: str
    """ISO 3166-1 alpha-2, or empty."""
    session_id: str
    time: datetime
    """Client time when given and within a day of the server's clock, else server time (UTC)."""
    client_clock_skewed: bool = False
    """The client sent a time more than a day from the server's clock; `time` is the server's."""


@dataclass(frozen=True, slots=True)
class RecommendQuery:
    """A validated Recommend request."""

    user_id: str
    num_items: int
    context: RequestContext
    exclude_item_ids: tuple[str, ...]
    request_id: str
    surface: Surface = Surface.MIXED
    """Which list the caller asked for."""


@dataclass(frozen=True, slots=True)
class Candidates:
    """Candidate items with the score of the stage that produced or last ordered them."""

    positions: Positions
    scores: Scores

    def __len__(self) -> int:
        return len(self.positions)

    def take(self, keep: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> Candidates:
        """The candidates selected by a boolean mask or an index array, in that order."""
        return Candidates(self.positions[keep], self.scores[keep])


@dataclass(frozen=True, slots=True)
class Ranking:
    """Ranked items and the model that ranked them."""

    items: Candidates
    """Ordered best first."""
    model_version: str
    degraded_reasons: tuple[str, ...]
    """Names of `DegradedReason` values (without the prefix) explaining a fallback."""
    discover: Candidates | None = None
    """The candidates the customer never bought, best discovery score first, when the model's
    discovery head scored them."""
