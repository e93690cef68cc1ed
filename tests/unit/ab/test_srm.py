"""Sample-ratio mismatch against gbstats' vector and scipy's chi-square test."""

from __future__ import annotations

import pytest
from scipy import stats as sps

from ab.srm import SrmInputError, srm_test


def test_matches_gbstats_check_srm() -> None:
    # gbstats tests/test_gbstats.py: check_srm([1000, 1200], [0.5, 0.5]) == 0.000020079
    assert round(srm_test([1000, 1200], [0.5, 0.5]).p_value, 9) == 0.000020079


@pytest.mark.parametrize(
    ("observed", "weights"),
    [([5030, 4970], [1, 1]), ([2110, 7750, 2140], [0.2, 0.6, 0.2]), ([901, 99], [90, 10])],
)
def test_matches_scipy_chisquare(observed: list[int], weights: list[float]) -> None:
    total = sum(observed)
    expected = [w / sum(weights) * total for w in weights]
    reference = sps.chisquare(observed, expected)
    result = srm_test(observed, weights)
    assert round(result.statistic, 5) == round(float(reference.statistic), 5)
    assert round(result.p_value, 5) == round(float(reference.pvalue), 5)
    assert result.df == len(observed) - 1


def test_equal_weights_by_default_and_no_users_is_no_evidence() -> None:
    assert srm_test([10, 10]).p_value == 1.0
    assert srm_test([0, 0], [1, 3]).p_value == 1.0


@pytest.mark.parametrize(
    ("observed", "weights", "field"),
    [
        ([10], [1.0], "observed"),
        ([10, 10], [1.0], "weights"),
        ([10, -1], [1.0, 1.0], "observed.1"),
        ([10, 10], [1.0, 0.0], "weights.1"),
    ],
)
def test_invalid_inputs_name_the_field(
    observed: list[int], weights: list[float], field: str
) -> None:
    with pytest.raises(SrmInputError) as info:
        srm_test(observed, weights)
    assert info.value.field == field
