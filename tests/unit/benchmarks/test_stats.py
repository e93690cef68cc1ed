"""Pure helpers of the Annoy-scale and ensemble benchmarks: latency summaries, top-K overlap,
smaps parsing and target picking."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.harness.stats import (
    latency_summary,
    mib,
    parse_smaps_rollup,
    pick_setting,
    smaps_for_path,
    topk_overlap,
)

SMAPS = """\
55d0c0a00000-55d0c0a21000 r--p 00000000 fd:01 1234                       /usr/bin/python3.11
Size:                132 kB
Rss:                 120 kB
Pss:                 60 kB
Shared_Clean:        120 kB
7f0000000000-7f0000100000 r--s 00000000 fd:01 99                         /tmp/x/items_10.ann
Size:               1024 kB
Rss:                 800 kB
Pss:                 400 kB
Shared_Clean:        800 kB
Private_Clean:         0 kB
VmFlags: rd sh mr mw me ms sd
7f0000200000-7f0000300000 r--s 00100000 fd:01 99                         /tmp/x/items_10.ann
Size:               1024 kB
Rss:                 100 kB
Pss:                 100 kB
Shared_Clean:          0 kB
Private_Clean:       100 kB
7f0000400000-7f0000500000 rw-p 00000000 00:00 0
Rss:                  64 kB
"""


def test_latency_summary_in_milliseconds() -> None:
    samples = np.arange(1, 101) / 1000.0  # 1..100 ms
    summary = latency_summary(samples)
    assert summary["median_ms"] == pytest.approx(50.5)
    assert summary["p99_ms"] == pytest.approx(np.quantile(np.arange(1, 101), 0.99))
    assert summary["max_ms"] == pytest.approx(100.0)
    assert summary["n"] == 100


def test_latency_summary_rejects_no_samples() -> None:
    with pytest.raises(ValueError, match="no samples"):
        latency_summary([])


def test_topk_overlap_counts_common_items_over_k() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.int32)
    found = [np.array([4, 3, 2, 1]), np.array([5, 9])]  # all found; half found, short list
    assert topk_overlap(found, exact, 4) == pytest.approx((1.0 + 0.25) / 2)


def test_topk_overlap_looks_only_at_the_first_k() -> None:
    exact = np.array([[1, 2, 9]], dtype=np.int32)
    assert topk_overlap([np.array([1, 3, 2])], exact, 2) == pytest.approx(0.5)


def test_topk_overlap_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="approximate results"):
        topk_overlap([np.array([1])], np.zeros((2, 1), dtype=np.int32), 1)


def test_parse_smaps_rollup() -> None:
    text = "00400000-7ffd [rollup]\nRss:   2048 kB\nPss:   1024 kB\nShared_Clean:  512 kB\n"
    assert parse_smaps_rollup(text) == {"Rss": 2048, "Pss": 1024, "Shared_Clean": 512}


def test_smaps_for_path_sums_every_mapping_of_the_file() -> None:
    totals = smaps_for_path(SMAPS, "/tmp/x/items_10.ann")
    assert totals["mappings"] == 2
    assert totals["Rss"] == 900
    assert totals["Pss"] == 500
    assert totals["Shared_Clean"] == 800
    assert totals["Private_Clean"] == 100
    assert smaps_for_path(SMAPS, "/tmp/other.ann") == {}


def test_mib() -> None:
    assert mib(2048) == 2.0


def test_pick_setting_prefers_cheapest_meeting_both() -> None:
    grid = [
        {"search_k": 1, "p99_ms": 0.5, "recall": 0.5},
        {"search_k": 2, "p99_ms": 1.5, "recall": 0.92},
        {"search_k": 3, "p99_ms": 1.9, "recall": 0.99},
        {"search_k": 4, "p99_ms": 9.0, "recall": 1.0},
    ]
    choice = pick_setting(grid, p99_target_ms=2.0, recall_target=0.9)
    assert choice["meets_both"]["search_k"] == 2
    assert choice["fastest_meeting_recall"]["search_k"] == 2
    assert choice["best_recall_meeting_p99"]["search_k"] == 3


def test_pick_setting_reports_fallbacks_when_nothing_meets_both() -> None:
    grid = [
        {"search_k": 1, "p99_ms": 1.0, "recall": 0.3},
        {"search_k": 2, "p99_ms": 30.0, "recall": 0.95},
    ]
    choice = pick_setting(grid, p99_target_ms=2.0, recall_target=0.9)
    assert choice["meets_both"] is None
    assert choice["fastest_meeting_recall"]["search_k"] == 2
    assert choice["best_recall_meeting_p99"]["search_k"] == 1
