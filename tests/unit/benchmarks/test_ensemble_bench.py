"""The pure parts of the ensemble benchmark: request batches and the overhead ratios."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.ensemble_bench import overhead, request_batches


def test_request_batches_are_consecutive_real_rows() -> None:
    features = np.arange(100 * 3, dtype=np.float32).reshape(100, 3)
    batches = request_batches(features, rows=20, count=5, seed=1)
    assert len(batches) == 5
    for batch in batches:
        assert batch.shape == (20, 3)
        assert batch.dtype == np.float32
        start = int(batch[0, 0]) // 3
        np.testing.assert_array_equal(batch, features[start : start + 20])


def test_request_batches_are_deterministic_per_seed() -> None:
    features = np.random.default_rng(0).random((500, 4), dtype=np.float32)
    a = request_batches(features, 50, 4, seed=3)
    b = request_batches(features, 50, 4, seed=3)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_request_batches_reject_too_many_rows() -> None:
    with pytest.raises(ValueError, match="rows requested"):
        request_batches(np.zeros((10, 2), dtype=np.float32), 11, 1)


def test_overhead_ratios() -> None:
    ensemble = {"median_ms": 3.0, "p99_ms": 6.0, "throughput_rps": 300.0}
    single = {"median_ms": 2.5, "p99_ms": 4.0, "throughput_rps": 400.0}
    result = overhead(ensemble, single)
    assert result["median_ratio"] == pytest.approx(1.2)
    assert result["p99_ratio"] == pytest.approx(1.5)
    assert result["median_added_ms"] == pytest.approx(0.5)
    assert result["p99_added_ms"] == pytest.approx(2.0)
    assert result["throughput_ratio"] == pytest.approx(0.75)
