"""Deterministic, sticky traffic splitting: a pure function the gateway calls in process.

A user's bucket is a 64-bit BLAKE2b hash of `salt:user_id` modulo 10,000. Each variant owns a
range of buckets laid out in variant order, with `[start, start + coverage * weight)` inside its
slot `[start, start + weight)` (the layout GrowthBook uses). So:

- the same user always gets the same variant (sticky), with no state and no network hop;
- experiments with different salts split users independently of each other, which is what
  lets experiments of different layers overlap (`assign_layers`): a user is in at most one
  experiment per layer, and in one experiment of every layer that covers them;
- ramping weights (10% -> 50%) or coverage only moves the users whose bucket changes owner:
  users never move from one treatment to another, only between a variant and its neighbour.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from ab.config import ExperimentConfig

BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class Assignment:
    """The variant one user sees in one experiment."""

    experiment: str
    variant: str
    model: str | None
    """The arm's ranking model; None: the arm leaves it to another layer or the default."""
    model_version: int
    bucket: int
    serve_surface: bool = True
    """Whether this arm serves the surface the request asks for (`VariantConfig`)."""

    @property
    def experiment_id(self) -> str:
        """`<experiment>_<variant>`, e.g. `ranker_v2_vs_v3_treatment` (the API's experiment_id)."""
        return f"{self.experiment}_{self.variant}"


def bucket_of(salt: str, user_id: str) -> int:
    """The user's bucket in [0, BUCKETS) for an experiment with this salt."""
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def assign(experiment: ExperimentConfig, user_id: str) -> Assignment | None:
    """The user's variant, or None when the experiment is off or the user outside its coverage."""
    if not experiment.enabled:
        return None
    bucket = bucket_of(experiment.salt, user_id)
    start = 0.0
    for variant in experiment.variants:
        low = start * BUCKETS
        high = (start + experiment.coverage * variant.weight) * BUCKETS
        if low <= bucket < high:
            return Assignment(
                experiment.name,
                variant.name,
                variant.model,
                variant.model_version,
                bucket,
                variant.serve_surface,
            )
        start += variant.weight
    return None


def assign_first(experiments: Iterable[ExperimentConfig], user_id: str) -> Assignment | None:
    """The assignment of the first experiment (in config order) that includes the user."""
    for experiment in experiments:
        found = assign(experiment, user_id)
        if found is not None:
            return found
    return None


def assign_layers(experiments: Iterable[ExperimentConfig], user_id: str) -> tuple[Assignment, ...]:
    """The user's arm in every layer that has one (`ExperimentConfig.layer`): within a layer
    the first experiment (config order) that includes the user; the result is in config order.
    """
    taken: set[str] = set()
    out: list[Assignment] = []
    for experiment in experiments:
        if experiment.layer in taken:
            continue
        found = assign(experiment, user_id)
        if found is not None:
            taken.add(experiment.layer)
            out.append(found)
    return tuple(out)
