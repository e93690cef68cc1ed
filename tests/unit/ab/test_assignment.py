"""Traffic splitting: shares, stickiness, independence and minimal movement on ramps."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.stats import chisquare

from ab.assignment import BUCKETS, assign, assign_first, bucket_of
from ab.config import ExperimentConfig, VariantConfig

IDS = [str(i) for i in range(1_000_000)]


def _experiment(
    weights: tuple[float, ...], salt: str = "s1", coverage: float = 1.0
) -> ExperimentConfig:
    return ExperimentConfig(
        name="exp",
        salt=salt,
        coverage=coverage,
        variants=tuple(
            VariantConfig(name=f"v{i}", model=f"m{i}", weight=w) for i, w in enumerate(weights)
        ),
    )


def _variants(experiment: ExperimentConfig) -> npt.NDArray[np.str_]:
    names = []
    for user in IDS:
        found = assign(experiment, user)
        names.append(found.variant if found else "none")
    return np.asarray(names)


def test_shares_match_weights_on_a_million_ids() -> None:
    experiment = _experiment((0.9, 0.1))
    variants = _variants(experiment)
    observed = np.array([(variants == "v0").sum(), (variants == "v1").sum()])
    assert observed.sum() == len(IDS)
    shares = observed / len(IDS)
    assert np.all(np.abs(shares - [0.9, 0.1]) < 0.003)
    # No sample-ratio mismatch against the configured weights.
    assert chisquare(observed, f_exp=[0.9 * len(IDS), 0.1 * len(IDS)]).pvalue > 0.001


def test_assignment_is_sticky_and_deterministic() -> None:
    experiment = _experiment((0.5, 0.5))
    first = [assign(experiment, u) for u in IDS[:1000]]
    again = [assign(experiment, u) for u in IDS[:1000]]
    assert first == again
    assert all(0 <= bucket_of("s1", u) < BUCKETS for u in IDS[:1000])


def test_ramping_moves_only_the_users_it_must() -> None:
    before = _variants(_experiment((0.9, 0.1)))
    after = _variants(_experiment((0.5, 0.5)))
    # Treatment users stay in treatment; only control users move, about 40% of everyone.
    assert np.all(after[before == "v1"] == "v1")
    moved = (before != after).mean()
    assert abs(moved - 0.4) < 0.003


def test_experiments_with_different_salts_are_independent() -> None:
    a = _variants(_experiment((0.5, 0.5), salt="a")) == "v1"
    b = _variants(_experiment((0.5, 0.5), salt="b")) == "v1"
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    expected = np.outer(table.sum(1), table.sum(0)) / table.sum()
    assert chisquare(table.ravel(), expected.ravel(), ddof=2).pvalue > 0.001


def test_coverage_and_disabled_experiments() -> None:
    half = _experiment((0.5, 0.5), coverage=0.5)
    covered = sum(assign(half, u) is not None for u in IDS[:100_000]) / 100_000
    assert abs(covered - 0.5) < 0.01
    off = _experiment((0.5, 0.5)).model_copy(update={"enabled": False})
    assert assign(off, "17850") is None
    found = assign_first((off, _experiment((1.0, 0.0))), "17850")
    assert found is not None and found.experiment_id == "exp_v0"


def test_an_arm_says_whether_it_serves_the_requested_surface() -> None:
    experiment = ExperimentConfig(
        name="mixed_vs_today",
        salt="s",
        variants=(
            VariantConfig(name="control", model="ranker_v2", weight=0.5, serve_surface=False),
            VariantConfig(name="treatment", model="ranker_v2", weight=0.5),
        ),
    )
    found = {}
    for user in IDS[:200]:
        assignment = assign(experiment, user)
        assert assignment is not None
        found[assignment.variant] = assignment.serve_surface
    assert found == {"control": False, "treatment": True}
