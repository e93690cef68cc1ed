"""Holm and Benjamini-Hochberg adjustments: our method names reach statsmodels' multipletests,
and the results match hand-computed adjustments."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from ab.multitest import Correction, adjust_p_values


@pytest.mark.parametrize(
    ("method", "reference"), [("holm", "holm"), ("benjamini-hochberg", "fdr_bh")]
)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_statsmodels(method: Correction, reference: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    p_values = np.concatenate([rng.uniform(0, 0.05, 4), rng.uniform(0, 1, 8), [0.04, 0.04]])
    ours = adjust_p_values(p_values.tolist(), method)
    theirs = multipletests(p_values, method=reference)[1]
    assert [round(x, 5) for x in ours] == [round(float(x), 5) for x in theirs]


def test_holm_keeps_order_and_caps_at_one() -> None:
    assert adjust_p_values([0.6, 0.7, 0.02], "holm") == pytest.approx((1.0, 1.0, 0.06))
    assert adjust_p_values([], "benjamini-hochberg") == ()


def test_benjamini_hochberg_by_hand() -> None:
    # Sorted 0.005, 0.01, 0.03, 0.04 -> 4p/rank = 0.02, 0.02, 0.04, 0.04 (monotone from the top).
    assert adjust_p_values([0.01, 0.04, 0.03, 0.005], "benjamini-hochberg") == pytest.approx(
        (0.02, 0.04, 0.04, 0.02)
    )


def test_rejects_values_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match=r"p_values\.1"):
        adjust_p_values([0.1, 1.5], "holm")
