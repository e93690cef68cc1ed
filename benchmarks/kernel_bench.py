"""The pipeline's numeric steps: the NumPy implementations (tests/numpy_reference.py) against the
compiled kernels (feature_service/kernels.py) that replaced them, side by side in one run.

For real customers (`make models` first), each step runs both ways on the same inputs, the two
interleaved request by request so machine load hits both alike; medians per step in
microseconds. Also reports numba's import, cold-compile and cached-load times (each in a fresh
interpreter), and with --cython the same two loops (features, re-rank) built with Cython.

    python -m benchmarks.kernel_bench [--users 400] [--cython]

--cython needs Cython and a C compiler: `.tools/uv/bin/uv run --no-sync --with cython python -m
benchmarks.kernel_bench --cython`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.harness.report import machine_description
from feature_service import kernels
from feature_service.catalogue import ItemCatalogue
from feature_service.definitions import (
    Context,
    ItemArrays,
    assemble_features,
    build_user_state,
    merge_candidates,
    top_k_exact,
)
from feature_service.history import PurchaseHistories
from gateway.stages.candidates import HISTORY_CANDIDATES, RetrievalIndex
from gateway.stages.filter import filter_candidates
from gateway.stages.rerank import cap_per_category, diversify, truncate
from gateway.stages.types import Candidates
from tests import numpy_reference as reference

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WHEN = datetime(2011, 12, 1, 15, 30, tzinfo=UTC)
POPULAR = 50


def _timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function()
    return (time.perf_counter() - started) * 1e6, result


def _steps(build: Path, users: int) -> dict[str, dict[str, float]]:
    catalogue = ItemCatalogue.load(build / "data")
    histories = PurchaseHistories.load(build / "data", catalogue, 0.0)
    index = RetrievalIndex.load(build / "retrieval", catalogue, -1, 50_000)
    items = ItemArrays.from_catalogue(catalogue)
    popular = np.argsort(-catalogue.popularity, kind="stable").astype(np.int32)[:POPULAR]
    rng = np.random.default_rng(0)
    context = Context(time=WHEN, device=1, page=1, country="GB")
    known = list(index.user_row)
    chosen = known[:: max(1, len(known) // users)][:users]
    times: dict[str, dict[str, list[float]]] = {}

    def both(step: str, numpy_way: Callable[[], Any], kernel_way: Callable[[], Any]) -> Any:
        a, want = _timed(numpy_way)
        b, got = _timed(kernel_way)
        sides = times.setdefault(step, {"numpy": [], "kernel": []})
        sides["numpy"].append(a)
        sides["kernel"].append(b)
        return got

    for _ in range(2):  # the first pass warms caches; only the second is kept
        times.clear()
        for user in chosen:
            purchases = histories.purchases(user)
            history = purchases.history
            past = both(
                "recent items (per call before, per event now)",
                partial(reference.recent_items, history, HISTORY_CANDIDATES),
                partial(_head, purchases.recent_items, HISTORY_CANDIDATES),
            )
            row = index.user_row[user]
            vector = index.user_vectors[row]
            nearest = both(
                "retrieval top-k (3,862 items, k=500)",
                partial(reference.nearest, index.user_vectors, index.item_vectors, row, 500, past),
                partial(_nearest, vector, index.item_vectors, 500, past),
            )
            positions = both(
                "merge candidates",
                partial(reference.merge_candidates, nearest, past, popular),
                partial(merge_candidates, nearest, past, popular),
            )
            candidates = Candidates(
                positions, (index.item_vectors[positions] @ vector).astype(np.float32)
            )
            blocked = np.unique(rng.choice(len(catalogue), 30)).astype(np.int32)
            kept = both(
                "filter",
                partial(reference.filter_candidates, candidates, blocked, catalogue.available),
                partial(filter_candidates, candidates, blocked, catalogue.available),
            )
            state = build_user_state(history, items, float("inf"), histories.country(user))
            both(
                "user state (per call before, per event now)",
                partial(build_user_state, history, items, float("inf"), ""),
                partial(_same, state),
            )
            both(
                "ranking features (~550 x 46)",
                partial(
                    reference.assemble_features, state, items, kept.positions, context, kept.scores
                ),
                partial(assemble_features, state, items, kept.positions, context, kept.scores),
            )
            scores = rng.random(len(kept), dtype=np.float32)
            ranked = both(
                "order by score",
                partial(reference.order, kept, scores),
                partial(_order, kept, scores),
            )
            both(
                "re-rank (diversity 0.3 on 150, cap 4, 10)",
                partial(_rerank, reference, ranked, catalogue.category, index.unit_item_vectors),
                partial(_rerank, _STAGES, ranked, catalogue.category, index.unit_item_vectors),
            )
    return {
        step: {
            "numpy_median_us": round(statistics.median(sides["numpy"]), 1),
            "kernel_median_us": round(statistics.median(sides["kernel"]), 1),
        }
        for step, sides in times.items()
    }


def _head(values: npt.NDArray[np.int32], count: int) -> npt.NDArray[np.int32]:
    return values[:count]


def _same(value: Any) -> Any:
    return value


def _nearest(
    vector: npt.NDArray[np.float32],
    items: npt.NDArray[np.float32],
    count: int,
    exclude: npt.NDArray[np.int32],
) -> npt.NDArray[np.int32]:
    found: npt.NDArray[np.int32] = top_k_exact(vector[None, :], items, count, [exclude])[0]
    return found


def _order(kept: Candidates, scores: npt.NDArray[np.float32]) -> Candidates:
    order = kernels.order_by_score(scores)
    return Candidates(kept.positions[order], scores[order])


_STAGES = SimpleNamespace(diversify=diversify, cap_per_category=cap_per_category, truncate=truncate)


def _rerank(
    rules: Any,
    ranked: Candidates,
    category: npt.NDArray[np.int16],
    embeddings: npt.NDArray[np.float32],
) -> Candidates:
    """The recommender's re-rank stage (diversity 0.3 over 30, 4 per category, 10 items)."""
    diverse = rules.diversify(ranked, category, 0.3, 30, embeddings)
    result: Candidates = rules.truncate(rules.cap_per_category(diverse, category, 4), 10)
    return result


def _fresh_python(code: str, env: dict[str, str]) -> float:
    """Seconds a fresh interpreter takes to run `code`."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env)
    return time.perf_counter() - started


def _compile_times() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        baseline = _fresh_python("import numpy", env)
        numba_import = _fresh_python("import numba", env)
        cold = _fresh_python("import feature_service.kernels", env)
        cached = _fresh_python("import feature_service.kernels", env)
    return {
        "python_and_numpy_import_s": round(baseline, 2),
        "numba_import_s": round(numba_import, 2),
        "kernels_cold_compile_s": round(cold, 2),
        "kernels_cached_load_s": round(cached, 2),
    }


_CYTHON = r"""
# cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
import numpy as np
from libc.math cimport isfinite, INFINITY

def fill_features(float[:, ::1] out, float[::1] shared, float[::1] log_price,
                  float[::1] log_popularity, float[::1] available, short[::1] category,
                  int[::1] candidates, int[::1] owned, float[::1] owned_log_counts,
                  double[::1] owned_last, float[::1] affinity, float mean_log_price, double now,
                  float[::1] retrieval_scores, long item_start, long category_start,
                  long cross_start, double seconds_per_day, double max_days):
    cdef Py_ssize_t i, j, lo, hi, mid, index, n_owned = owned.shape[0], width = shared.shape[0]
    cdef int c, cat
    cdef float log_count, price_gap
    cdef double last, days
    cdef bint bought
    for i in range(candidates.shape[0]):
        c = candidates[i]
        for j in range(width):
            out[i, j] = shared[j]
        cat = category[c]
        out[i, item_start] = log_price[c]
        out[i, item_start + 1] = log_popularity[c]
        out[i, item_start + 2] = available[c]
        out[i, category_start + cat] = 1.0
        bought = False
        log_count = 0.0
        last = -INFINITY
        price_gap = 0.0
        if n_owned:
            lo = 0
            hi = n_owned
            while lo < hi:
                mid = (lo + hi) // 2
                if owned[mid] < c:
                    lo = mid + 1
                else:
                    hi = mid
            index = min(lo, n_owned - 1)
            if owned[index] == c:
                bought = True
                log_count = owned_log_counts[index]
                last = owned_last[index]
            price_gap = log_price[c] - mean_log_price
        days = (now - last) / seconds_per_day
        if isfinite(days):
            days = min(max(days, 0.0), max_days)
        else:
            days = max_days
        out[i, cross_start] = affinity[cat]
        out[i, cross_start + 1] = price_gap
        out[i, cross_start + 2] = log_count
        out[i, cross_start + 3] = 1.0 if bought else 0.0
        out[i, cross_start + 4] = <float>days
        out[i, cross_start + 5] = retrieval_scores[i]

def greedy_mmr(float[::1] scores, float[:, ::1] similarity, double weight, long count):
    cdef Py_ssize_t n = scores.shape[0], i, p, best
    cdef double low = INFINITY, high = -INFINITY, spread, s, g, best_gain, penalised
    for i in range(n):
        s = scores[i]
        low = min(low, s)
        high = max(high, s)
    spread = high - low
    base_arr = np.empty(n, np.float64)
    gain_arr = np.empty(n, np.float64)
    cdef double[::1] base = base_arr
    cdef double[::1] gain = gain_arr
    for i in range(n):
        base[i] = (1.0 - weight) * (((scores[i] - low) / spread) if spread > 0 else 1.0)
        gain[i] = base[i]
    picks = min(count, n)
    order_arr = np.empty(picks, np.int64)
    cdef long[::1] order = order_arr
    for p in range(picks):
        best = 0
        best_gain = gain[0]
        for i in range(1, n):
            if gain[i] > best_gain:
                best = i
                best_gain = gain[i]
        order[p] = best
        for i in range(n):
            penalised = base[i] - weight * <double>similarity[best, i]
            if penalised < gain[i]:
                gain[i] = penalised
        gain[best] = -INFINITY
    return order_arr
"""


def _cython_comparison(build: Path, users: int) -> dict[str, dict[str, float]]:
    """The features and MMR loops as a Cython extension, against the numba kernels."""
    import importlib.util

    from Cython.Build import cythonize  # type: ignore[import-not-found,unused-ignore]
    from setuptools import Extension  # type: ignore[import-untyped,unused-ignore]
    from setuptools.dist import Distribution  # type: ignore[import-untyped,unused-ignore]

    from feature_service.definitions import (
        _CATEGORY_START,
        _CROSS_START,
        _ITEM_START,
        MAX_DAYS,
        NUM_FEATURES,
        SECONDS_PER_DAY,
        _shared_row,
        epoch_seconds,
    )

    work = Path(tempfile.mkdtemp())
    try:
        (work / "cykernels.pyx").write_text(_CYTHON)
        started = time.perf_counter()
        extension = Extension(
            "cykernels", [str(work / "cykernels.pyx")], include_dirs=[np.get_include()],
            extra_compile_args=["-O3"],
        )  # fmt: skip
        dist = Distribution({"ext_modules": cythonize([extension], quiet=True)})
        command = dist.get_command_obj("build_ext")
        command.build_lib = str(work)
        command.build_temp = str(work / "tmp")
        command.ensure_finalized()
        command.run()
        build_s = time.perf_counter() - started
        path = next(work.glob("cykernels*.so"))
        spec = importlib.util.spec_from_file_location("cykernels", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        started = time.perf_counter()
        spec.loader.exec_module(module)
        load_s = time.perf_counter() - started

        catalogue = ItemCatalogue.load(build / "data")
        histories = PurchaseHistories.load(build / "data", catalogue, 0.0)
        index = RetrievalIndex.load(build / "retrieval", catalogue, -1, 50_000)
        items = ItemArrays.from_catalogue(catalogue)
        context = Context(time=WHEN, device=1, page=1, country="GB")
        rng = np.random.default_rng(0)
        known = list(index.user_row)
        features: dict[str, list[float]] = {"numba": [], "cython": []}
        mmr: dict[str, list[float]] = {"numba": [], "cython": []}
        for user in known[:: max(1, len(known) // users)][:users]:
            history = histories.history(user)
            state = build_user_state(history, items, float("inf"), "")
            candidates = rng.choice(len(catalogue), 550, replace=False).astype(np.int32)
            scores = rng.random(550, dtype=np.float32)
            shared = _shared_row(state, context)
            now = epoch_seconds(WHEN)
            outs = []
            for name, fill in (("numba", kernels.fill_features), ("cython", module.fill_features)):
                out = np.empty((550, NUM_FEATURES), np.float32)
                elapsed, _ = _timed(
                    partial(
                        fill, out, shared, items.log_price, items.log_popularity, items.available,
                        items.category, candidates, state.item_positions, state.item_log_counts,
                        state.item_last_purchase, state.category_affinity,
                        np.float32(state.mean_log_price), now, scores, _ITEM_START,
                        _CATEGORY_START, _CROSS_START, SECONDS_PER_DAY, MAX_DAYS,
                    )
                )  # fmt: skip
                features[name].append(elapsed)
                outs.append(out)
            np.testing.assert_array_equal(outs[0], outs[1])
            pool = np.sort(scores)[::-1][:150].copy()
            vectors = index.unit_item_vectors[candidates[:150]]
            similarity = vectors @ vectors.T
            a, by_numba = _timed(
                partial(kernels.greedy_mmr, pool, similarity, np.empty(0, np.int16), True, 0.3, 30)
            )
            b, by_cython = _timed(partial(module.greedy_mmr, pool, similarity, 0.3, 30))
            np.testing.assert_array_equal(by_numba, by_cython)
            mmr["numba"].append(a)
            mmr["cython"].append(b)
        return {
            "ranking features fill (550 x 46)": {
                f"{k}_median_us": round(statistics.median(v[len(v) // 2 :]), 1)
                for k, v in features.items()
            },
            "greedy MMR (150 pool, 30 picks)": {
                f"{k}_median_us": round(statistics.median(v[len(v) // 2 :]), 1)
                for k, v in mmr.items()
            },
            "cython build and load": {"build_s": round(build_s, 2), "load_s": round(load_s, 4)},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="kernel_bench", description=__doc__)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--cython", action="store_true", help="also compare a Cython build")
    args = parser.parse_args()
    build = REPO / "build"
    if not (build / "retrieval" / "metadata.json").exists():
        sys.exit("kernel_bench: run `make models` first (no retrieval index in build/)")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    report: dict[str, Any] = {
        "benchmark": "pipeline steps: NumPy against the compiled kernels, same inputs",
        "machine": {**machine_description(), "cores_used": 1},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "users": args.users,
        "steps": _steps(build, args.users),
        "compile": _compile_times(),
    }
    if args.cython:
        report["cython"] = _cython_comparison(build, args.users)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kernel_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
