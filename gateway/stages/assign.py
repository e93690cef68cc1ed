"""Stage 2: assign the user to an experiment variant, which decides the model that ranks."""

from __future__ import annotations

from collections.abc import Sequence

from ab.assignment import Assignment, assign_first
from ab.config import ExperimentConfig


def assign_variant(user_id: str, experiments: Sequence[ExperimentConfig]) -> Assignment | None:
    """The user's variant in the first running experiment that includes them, else None
    (the user then gets the default model)."""
    return assign_first(experiments, user_id)
