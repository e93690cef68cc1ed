"""Small pure helpers shared by the Annoy-scale and ensemble benchmarks: latency summaries,
top-K overlap and /proc smaps parsing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt


def latency_summary(samples_s: Sequence[float] | npt.NDArray[np.float64]) -> dict[str, float]:
    """Median, p90, p99, mean and max in milliseconds of per-call times given in seconds.

    Percentiles use NumPy's default (linear interpolation), as ``model_bench`` does.
    """
    values = np.asarray(samples_s, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no samples")
    ms = values * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.quantile(ms, 0.90)),
        "p99_ms": float(np.quantile(ms, 0.99)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
        "n": int(values.size),
    }


def topk_overlap(
    found: Sequence[npt.NDArray[np.int32]] | Sequence[Sequence[int]],
    exact: npt.NDArray[np.int32] | Sequence[Sequence[int]],
    k: int,
) -> float:
    """Mean over queries of ``|found[i][:k] ∩ exact[i][:k]| / k`` (ANN recall@k).

    A query for which the approximate method returned fewer than ``k`` items is penalised:
    the denominator is always ``k``.
    """
    if k <= 0:
        raise ValueError("k must be positive")
    if len(found) != len(exact):
        raise ValueError(f"{len(found)} approximate results for {len(exact)} exact ones")
    if len(found) == 0:
        raise ValueError("no queries")
    values = [
        len(np.intersect1d(np.asarray(a)[:k], np.asarray(b)[:k])) / k
        for a, b in zip(found, exact, strict=True)
    ]
    return float(np.mean(values))


def parse_smaps_rollup(text: str) -> dict[str, int]:
    """``Key: N kB`` lines of ``/proc/<pid>/smaps_rollup`` as ``{key: kB}``."""
    result: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].endswith(":") and parts[2] == "kB":
            result[parts[0][:-1]] = int(parts[1])
    return result


def _is_header(line: str) -> bool:
    first = line.split(maxsplit=1)[0] if line.strip() else ""
    return "-" in first and not first.endswith(":")


def smaps_for_path(text: str, path: str) -> dict[str, int]:
    """``/proc/<pid>/smaps`` kB figures summed over every mapping of the file ``path``.

    Returns an empty dict when the file is not mapped.
    """
    totals: dict[str, int] = {}
    current = False
    for line in text.splitlines():
        if not line.strip():
            continue
        if _is_header(line):
            fields = line.split(maxsplit=5)
            current = len(fields) == 6 and fields[5].strip() == path
            if current:
                totals["mappings"] = totals.get("mappings", 0) + 1
            continue
        if current:
            parts = line.split()
            if len(parts) == 3 and parts[0].endswith(":") and parts[2] == "kB":
                key = parts[0][:-1]
                totals[key] = totals.get(key, 0) + int(parts[1])
    return totals


def mib(kilobytes: int | float) -> float:
    """kB (as /proc reports them, KiB) to MiB, rounded to 0.1."""
    return round(float(kilobytes) / 1024.0, 1)


def pick_setting(
    grid: Iterable[dict[str, Any]], *, p99_target_ms: float, recall_target: float
) -> dict[str, Any]:
    """The grid rows that meet both targets (cheapest p99 first) and the best fallbacks.

    Each row needs ``p99_ms`` and ``recall``. Returns ``{"meets_both": row | None,
    "fastest_meeting_recall": row | None, "best_recall_meeting_p99": row | None}``.
    """
    rows = list(grid)
    both = [r for r in rows if r["p99_ms"] < p99_target_ms and r["recall"] >= recall_target]
    recall_ok = [r for r in rows if r["recall"] >= recall_target]
    p99_ok = [r for r in rows if r["p99_ms"] < p99_target_ms]
    return {
        "meets_both": min(both, key=lambda r: r["p99_ms"]) if both else None,
        "fastest_meeting_recall": min(recall_ok, key=lambda r: r["p99_ms"]) if recall_ok else None,
        "best_recall_meeting_p99": max(p99_ok, key=lambda r: r["recall"]) if p99_ok else None,
    }
