"""A/A simulation: the fixed test holds its level, peeking breaks it, sequential does not."""

from __future__ import annotations

from ab.simulation import simulate_aa


def test_false_positive_rates_under_peeking() -> None:
    result = simulate_aa(experiments=2000, users_per_arm=1000, looks=10, alpha=0.05, seed=7)
    # one look at the end: the Welch test's false-positive rate is alpha (+- 2 binomial SEs)
    assert 0.04 <= result.fixed_horizon <= 0.06
    # ten looks with the same test: the familiar inflation, to several times alpha
    assert result.naive_peeking > 2 * result.fixed_horizon
    # ten looks with the confidence sequence: still at most alpha
    assert result.sequential_peeking <= 0.05
