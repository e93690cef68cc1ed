"""Stage 6: score the candidates.

`PopularityRanker` is the fallback ranker: it keeps the retrieval order (popularity) and is what
answers whenever no trained ranker can (none deployed, Triton down or too slow). Responses it
produces are flagged degraded.
"""

from __future__ import annotations

import numpy as np

from gateway.stages.types import Candidates, Ranking

FALLBACK_MODEL_VERSION = "popularity"


class PopularityRanker:
    """Orders candidates by their retrieval score (popularity), best first."""

    def rank(self, candidates: Candidates, reason: str = "NO_MODEL") -> Ranking:
        """The fallback ranking, with `reason` saying why it answered."""
        order = np.argsort(-candidates.scores, kind="stable")
        return Ranking(candidates.take(order), FALLBACK_MODEL_VERSION, (reason,))
