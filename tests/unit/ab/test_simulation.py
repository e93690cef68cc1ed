"""A/A simulation: the fixed test holds its level, peeking breaks it, sequential does not."""

from __future__ import annotations

import pytest

from ab.simulation import simulate_aa, simulate_cuped, simulate_power


def test_false_positive_rates_under_peeking() -> None:
    result = simulate_aa(experiments=2000, users_per_arm=1000, looks=10, alpha=0.05, seed=7)
    # one look at the end: the Welch test's false-positive rate is alpha (+- 2 binomial SEs)
    assert 0.04 <= result.fixed_horizon <= 0.06
    # ten looks with the same test: the familiar inflation, to several times alpha
    assert result.naive_peeking > 2 * result.fixed_horizon
    # ten looks with the confidence sequence: still at most alpha
    assert result.sequential_peeking <= 0.05


def test_measured_power_matches_the_power_analysis() -> None:
    result = simulate_power(experiments=2000)
    assert result.users_per_arm == 207_935
    assert abs(result.measured_power - 0.8) <= 0.03


def test_cuped_narrows_intervals_and_keeps_coverage() -> None:
    result = simulate_cuped(experiments=400, correlation=0.7)
    # The variance shrinks by 1 - rho^2, so the width by about sqrt(0.51) = 0.71.
    assert result.mean_width_cuped / result.mean_width_plain == pytest.approx(0.714, abs=0.03)
    assert 0.92 <= result.coverage_cuped <= 0.98
