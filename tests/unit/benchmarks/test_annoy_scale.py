"""The pure parts of the Annoy-scale benchmark: the Gaussian extension of the real
embeddings, exact search in batches and the labelled extrapolation."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from benchmarks.annoy_scale import exact_top_k, extend_with_gaussian, extrapolate, fit_gaussian


def _real(n: int = 400, dim: int = 8, seed: int = 3) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim))
    return (rng.normal(size=(n, dim)) @ mixing + 2.0).astype(np.float32)


def test_extension_keeps_the_real_rows_first_and_has_the_right_shape() -> None:
    real = _real()
    items = extend_with_gaussian(real, 1000, seed=0)
    assert items.shape == (1000, 8)
    assert items.dtype == np.float32
    assert items.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(items[:400], real)


def test_extension_is_deterministic_per_seed() -> None:
    real = _real()
    a = extend_with_gaussian(real, 900, seed=7)
    b = extend_with_gaussian(real, 900, seed=7)
    c = extend_with_gaussian(real, 900, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[400:], c[400:])


def test_extension_matches_the_real_mean_and_covariance() -> None:
    real = _real()
    synthetic = extend_with_gaussian(real, 400 + 200_000, seed=1)[400:].astype(np.float64)
    np.testing.assert_allclose(synthetic.mean(axis=0), real.mean(axis=0), atol=0.05)
    np.testing.assert_allclose(
        np.cov(synthetic, rowvar=False), np.cov(real.astype(np.float64), rowvar=False), atol=0.15
    )


def test_extension_of_exactly_the_real_rows_adds_nothing() -> None:
    real = _real()
    np.testing.assert_array_equal(extend_with_gaussian(real, 400), real)


def test_extension_rejects_fewer_rows_than_the_real_ones() -> None:
    with pytest.raises(ValueError, match="smaller than"):
        extend_with_gaussian(_real(), 10)


def test_fit_gaussian_handles_a_singular_covariance() -> None:
    real = _real(dim=4)
    degenerate = np.hstack([real, real[:, :1]])  # a repeated column: singular covariance
    mean, factor = fit_gaussian(degenerate)
    assert mean.shape == (5,)
    np.testing.assert_allclose(factor @ factor.T, np.cov(degenerate, rowvar=False), atol=1e-6)


def test_exact_top_k_in_batches_equals_one_pass() -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(300, 6)).astype(np.float32)
    queries = rng.normal(size=(37, 6)).astype(np.float32)
    batched, seconds = exact_top_k(queries, items, 10, batch=8)
    expected = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(batched, expected)
    assert seconds >= 0.0


def test_extrapolation_is_labelled_and_scales_n_log_n() -> None:
    result = extrapolate(100_000, build_s=10.0, file_bytes=1_000, target=1_000_000)
    assert "EXTRAPOLATED" in result["label"]
    assert result["file_bytes"] == 10_000
    assert result["build_s"] == pytest.approx(10.0 * 10 * (np.log(1e6) / np.log(1e5)))
