"""The Annoy candidate index at catalogue scale (issue #3, step 6), one thread.

The real catalogue has 3,862 items. To see how the production settings (metric ``dot``, 32
ALS factors, K = 500 candidates) behave at 1,000,000 items, the real item embeddings
(``build/retrieval/item_embeddings.npy``) are extended with **synthetic** items drawn from a
Gaussian fitted to them (their mean and full covariance). Rows ``0..3861`` are the real items;
the rest are synthetic. Queries are real user embeddings (``user_embeddings.npy``).

Measured per ``n_trees``:

- build time (adding the items, ``build(n_trees, n_jobs)``, ``save``) and the index file size;
- query latency (median, p99) of ``get_nns_by_vector(v, 500, search_k)`` at several
  ``search_k`` over ``--queries`` users, one at a time;
- recall@500 of those queries against exact search (NumPy inner products + argpartition) on
  the first ``--recall-queries`` of them;
- memory with the index memory-mapped by two child processes at once: each loads the saved
  file (``AnnoyIndex.load``, mmap) and touches it, once by answering queries for its own
  users and once with ``prefault`` (the whole file resident); the parent then reads
  ``/proc/<pid>/smaps`` (the mapping of the index file) and ``smaps_rollup`` of each child.
  ``Rss`` counts shared pages in every process, ``Pss`` splits them between the sharers, so the
  sum of the children's ``Pss`` for the mapping is what the machine really holds once.

Targets: query p99 < 2 ms and recall@500 >= 0.9. Run (the JSON goes to
``benchmarks/results/annoy_scale.json``, a summary to ``annoy_scale.md``)::

    .venv/bin/python -m benchmarks.annoy_scale [--items 1000000] [--trees 10 25]

When a full build is too slow for a machine, ``--items N`` runs a smaller catalogue; the
report then extrapolates build time and file size to 1M items, labelled as such.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import threadpoolctl
from annoy import AnnoyIndex

from benchmarks.harness.report import machine_description, package_version
from benchmarks.harness.stats import (
    latency_summary,
    mib,
    parse_smaps_rollup,
    pick_setting,
    smaps_for_path,
    topk_overlap,
)
from feature_service.definitions import top_k_exact
from triton_models.retrieval import METRIC

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_P99_MS = 2.0
TARGET_RECALL = 0.9
FULL_SCALE = 1_000_000
DEFAULT_SEARCH_K = (5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 400_000, 800_000)
PRODUCTION_SEARCH_K = 20_000
"""build/retrieval/metadata.json's search_k: the probes touch the index the way production does."""
_CHUNK = 100_000


def fit_gaussian(real: npt.NDArray[np.floating[Any]]) -> tuple[npt.NDArray[np.float64], Any]:
    """Mean and a factor ``L`` with ``L @ L.T == cov`` of the rows of ``real`` (full cov).

    Cholesky when the covariance is positive definite, otherwise a symmetric square root from
    its eigen-decomposition (negative round-off eigenvalues clipped to zero).
    """
    data = np.asarray(real, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError("need a 2-D array with at least two rows")
    mean = data.mean(axis=0)
    cov = np.cov(data, rowvar=False)
    try:
        factor = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(cov)
        factor = vectors * np.sqrt(np.clip(values, 0.0, None))
    return mean, factor


def extend_with_gaussian(
    real: npt.NDArray[np.floating[Any]], n_total: int, seed: int = 0
) -> npt.NDArray[np.float32]:
    """``real`` followed by ``n_total - len(real)`` synthetic rows from its fitted Gaussian.

    Deterministic for a given ``seed``; float32 and C-contiguous like the production array.
    """
    n_real, dim = real.shape
    if n_total < n_real:
        raise ValueError(f"n_total {n_total} is smaller than the {n_real} real rows")
    mean, factor = fit_gaussian(real)
    out = np.empty((n_total, dim), dtype=np.float32)
    out[:n_real] = real
    rng = np.random.default_rng(seed)
    for start in range(n_real, n_total, _CHUNK):
        stop = min(start + _CHUNK, n_total)
        z = rng.standard_normal((stop - start, dim))
        out[start:stop] = mean + z @ factor.T
    return out


def exact_top_k(
    queries: npt.NDArray[np.float32], items: npt.NDArray[np.float32], k: int, batch: int = 25
) -> tuple[npt.NDArray[np.int32], float]:
    """Exact top-``k`` by inner product in batches (bounded memory); also seconds per query."""
    parts = []
    start = time.perf_counter()
    for first in range(0, len(queries), batch):
        parts.append(top_k_exact(queries[first : first + batch], items, k))
    elapsed = time.perf_counter() - start
    return np.concatenate(parts), elapsed / max(len(queries), 1)


def extrapolate(
    measured_items: int, build_s: float, file_bytes: int, target: int
) -> dict[str, Any]:
    """Build time scaled by ``N log N`` and file size scaled linearly to ``target`` items."""
    ratio = target / measured_items
    log_ratio = math.log(target) / math.log(measured_items)
    return {
        "label": "EXTRAPOLATED, not measured",
        "from_items": measured_items,
        "to_items": target,
        "build_s": build_s * ratio * log_ratio,
        "file_bytes": int(file_bytes * ratio),
        "method": "build time ~ N log N, file size ~ N",
    }


def _read(path: str) -> str:
    return Path(path).read_text()


def _probe_child(
    index_path: str,
    dim: int,
    users: npt.NDArray[np.float32],
    k: int,
    search_k: int,
    prefault: bool,
    conn: Connection,
) -> None:
    """Child process: map the index, touch it, report, then wait to be told to exit."""
    before = parse_smaps_rollup(_read("/proc/self/smaps_rollup"))
    index = AnnoyIndex(dim, METRIC)
    index.load(index_path, prefault=prefault)
    for vector in users:
        index.get_nns_by_vector(vector.tolist(), k, search_k=search_k)
    conn.send({"rollup_before_load_kB": before})
    conn.recv()
    index.unload()
    conn.close()


def memory_probe(
    index_path: Path,
    dim: int,
    users: npt.NDArray[np.float32],
    k: int,
    search_k: int,
    *,
    prefault: bool,
    per_child: int,
) -> dict[str, Any]:
    """Two child processes map ``index_path`` at once; their smaps figures while both live."""
    ctx = mp.get_context("spawn")
    children = []
    try:
        for i in range(2):
            parent_end, child_end = ctx.Pipe()
            mine = np.ascontiguousarray(users[i * per_child : (i + 1) * per_child])
            process = ctx.Process(
                target=_probe_child,
                args=(str(index_path), dim, mine, k, search_k, prefault, child_end),
            )
            process.start()
            children.append((process, parent_end))
        replies = [conn.recv() for _, conn in children]
        per_process: list[dict[str, Any]] = []
        mappings: list[dict[str, int]] = []
        for (process, _), reply in zip(children, replies, strict=True):
            pid = process.pid
            mapping = smaps_for_path(_read(f"/proc/{pid}/smaps"), str(index_path))
            rollup = parse_smaps_rollup(_read(f"/proc/{pid}/smaps_rollup"))
            mappings.append(mapping)
            per_process.append(
                {
                    "pid": pid,
                    "index_mapping_kB": mapping,
                    "rollup_kB": {
                        key: rollup.get(key, 0)
                        for key in ("Rss", "Pss", "Shared_Clean", "Private_Clean", "Private_Dirty")
                    },
                    "rollup_before_load_kB": {
                        key: reply["rollup_before_load_kB"].get(key, 0) for key in ("Rss", "Pss")
                    },
                }
            )
    finally:
        for process, conn in children:
            if process.is_alive():
                with contextlib.suppress(BrokenPipeError, OSError):
                    conn.send("stop")
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
    rss = [m.get("Rss", 0) for m in mappings]
    pss = [m.get("Pss", 0) for m in mappings]
    shared = [m.get("Shared_Clean", 0) for m in mappings]
    return {
        "touch": "prefault (MAP_POPULATE)" if prefault else f"{per_child} queries per child",
        "processes": per_process,
        "index_mapping_rss_mib": [mib(v) for v in rss],
        "index_mapping_pss_mib": [mib(v) for v in pss],
        "index_mapping_shared_clean_mib": [mib(v) for v in shared],
        "sum_rss_mib": mib(sum(rss)),
        "sum_pss_mib": mib(sum(pss)),
        "file_mib": mib(index_path.stat().st_size / 1024),
        "reading": "sum of Pss = resident index pages held once by the machine (page cache); "
        "sum of Rss double-counts the pages both children share",
    }


def build_index(
    items: npt.NDArray[np.float32], n_trees: int, n_jobs: int, seed: int, path: Path
) -> tuple[AnnoyIndex, dict[str, Any]]:
    """Builds and saves the index (``save`` re-maps the file); returns it and the timings."""
    index = AnnoyIndex(items.shape[1], METRIC)
    index.set_seed(seed)
    start = time.perf_counter()
    for position, vector in enumerate(items):
        index.add_item(position, vector.tolist())
    added = time.perf_counter()
    index.build(n_trees, n_jobs=n_jobs)
    built = time.perf_counter()
    index.save(str(path))
    saved = time.perf_counter()
    size = path.stat().st_size
    return index, {
        "n_trees": n_trees,
        "n_jobs": n_jobs,
        "add_items_s": added - start,
        "build_s": built - added,
        "save_s": saved - built,
        "total_s": saved - start,
        "file_bytes": size,
        "file_mib": mib(size / 1024),
    }


def time_queries(
    index: AnnoyIndex,
    users: npt.NDArray[np.float32],
    exact: npt.NDArray[np.int32],
    k: int,
    search_k: int,
    max_seconds: float = float("inf"),
) -> dict[str, Any]:
    """Latency of each query one at a time; recall on the first ``len(exact)`` queries.

    After the recall queries, stops early once ``max_seconds`` have passed (slow settings).
    """
    for vector in users[:20]:  # warm-up
        index.get_nns_by_vector(vector.tolist(), k, search_k=search_k)
    samples: list[float] = []
    found: list[list[int]] = []
    began = time.perf_counter()
    for i, vector in enumerate(users):
        if i >= len(exact) and time.perf_counter() - began > max_seconds:
            break
        start = time.perf_counter()
        result = index.get_nns_by_vector(vector.tolist(), k, search_k=search_k)
        samples.append(time.perf_counter() - start)
        if i < len(exact):
            found.append(result)
    summary = latency_summary(samples)
    return {
        "search_k": search_k,
        **{key: summary[key] for key in ("median_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms")},
        "queries": len(samples),
        "stopped_by_time_budget": len(samples) < len(users),
        "recall": topk_overlap(found, exact, k),
        "recall_queries": len(exact),
        "min_returned": min(len(f) for f in found),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the report."""
    load_at_start = machine_description()
    real = np.load(args.retrieval / "item_embeddings.npy").astype(np.float32)
    all_users = np.load(args.retrieval / "user_embeddings.npy").astype(np.float32)
    rng = np.random.default_rng(args.seed)
    users = np.ascontiguousarray(
        all_users[rng.choice(len(all_users), size=min(args.queries, len(all_users)), replace=False)]
    )
    probe_users = np.ascontiguousarray(all_users[rng.permutation(len(all_users))[:400]])

    start = time.perf_counter()
    items = extend_with_gaussian(real, args.items, seed=args.seed)
    generate_s = time.perf_counter() - start
    print(f"{len(items)} items ({len(items) - len(real)} synthetic) in {generate_s:.1f} s")

    recall_users = users[: args.recall_queries]
    exact, exact_s_per_query = exact_top_k(recall_users, items, args.k)
    print(f"exact top-{args.k}: {exact_s_per_query * 1e3:.1f} ms/query (batched)")

    workdir = Path(tempfile.mkdtemp(prefix="annoy_scale_", dir=args.workdir))
    builds = []
    try:
        for n_trees in args.trees:
            path = workdir / f"items_{n_trees}.ann"
            index, build = build_index(items, n_trees, args.n_jobs, args.seed, path)
            print(
                f"n_trees {n_trees}: build {build['build_s']:.1f} s "
                f"(+{build['add_items_s']:.1f} s add), {build['file_mib']} MiB"
            )
            grid = []
            for search_k in args.search_k:
                row = {
                    "n_trees": n_trees,
                    **time_queries(
                        index, users, exact, args.k, search_k, args.max_seconds_per_setting
                    ),
                }
                grid.append(row)
                print(
                    f"  search_k {search_k}: median {row['median_ms']:.2f} ms, "
                    f"p99 {row['p99_ms']:.2f} ms, recall@{args.k} {row['recall']:.3f}"
                )
            index.unload()  # the parent must not be a third sharer of the mapping
            probe_k = args.probe_search_k
            memory = [
                memory_probe(
                    path,
                    items.shape[1],
                    probe_users,
                    args.k,
                    probe_k,
                    prefault=False,
                    per_child=100,
                ),
                memory_probe(
                    path, items.shape[1], probe_users, args.k, probe_k, prefault=True, per_child=0
                ),
            ]
            for m in memory:
                print(
                    f"  memory ({m['touch']}): mapping Rss {m['index_mapping_rss_mib']} MiB, "
                    f"Pss {m['index_mapping_pss_mib']} MiB, sum Pss {m['sum_pss_mib']} MiB"
                )
            builds.append({**build, "queries": grid, "memory": memory})
            path.unlink()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    grid_all = [row for b in builds for row in b["queries"]]
    choice = pick_setting(grid_all, p99_target_ms=TARGET_P99_MS, recall_target=TARGET_RECALL)
    report: dict[str, Any] = {
        "benchmark": "Annoy candidate index at catalogue scale, one thread",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            **load_at_start,
            "threads": 1,
            "note": "shared 2-core development machine (CI and other engineers); timings are "
            "noisy and p99 especially so",
        },
        "versions": {
            "python": sys.version.split()[0],
            "annoy": package_version("annoy"),
            "numpy": np.__version__,
        },
        "settings": {
            "items": len(items),
            "real_items": len(real),
            "synthetic_items": len(items) - len(real),
            "synthetic": "SYNTHETIC: rows beyond the real ones are drawn from a Gaussian with "
            "the mean and full covariance of the real ALS item embeddings (seeded)",
            "dim": int(items.shape[1]),
            "metric": METRIC,
            "k": args.k,
            "trees": list(args.trees),
            "search_k": list(args.search_k),
            "n_jobs": args.n_jobs,
            "queries": len(users),
            "max_seconds_per_setting": args.max_seconds_per_setting,
            "memory_probe": "two spawned children map the saved file at once; touch 1: 100 "
            f"queries each (different users) at search_k {args.probe_search_k}; touch 2: "
            "load(prefault=True); the parent has unloaded its own mapping",
            "query_source": "real user embeddings (build/retrieval/user_embeddings.npy), sampled",
            "recall_queries": len(recall_users),
            "recall_definition": f"|annoy top-{args.k} ∩ exact top-{args.k}| / {args.k}, mean "
            "over queries; exact = NumPy inner products + argpartition over all items",
            "seed": args.seed,
        },
        "data": {
            "generate_s": generate_s,
            "real_norm_mean": float(np.linalg.norm(real, axis=1).mean()),
            "synthetic_norm_mean": float(np.linalg.norm(items[len(real) :], axis=1).mean())
            if len(items) > len(real)
            else None,
            "real_items_in_exact_top_k": float(np.mean(exact < len(real))),
        },
        "exact_search_ms_per_query_batched": exact_s_per_query * 1e3,
        "builds": builds,
        "targets": {
            "p99_ms_below": TARGET_P99_MS,
            "recall_at_least": TARGET_RECALL,
            "met": choice["meets_both"] is not None,
            **choice,
        },
    }
    if len(items) < FULL_SCALE and builds:
        report["extrapolation_to_1m"] = [
            extrapolate(len(items), b["build_s"], b["file_bytes"], FULL_SCALE) for b in builds
        ]
    return report


def markdown(report: dict[str, Any]) -> str:
    """A short human summary of the report."""
    s = report["settings"]
    m = report["machine"]
    lines = [
        f"# Annoy index at {s['items']:,} items ({report['created']})",
        "",
        f"{s['real_items']:,} real ALS item embeddings + {s['synthetic_items']:,} **synthetic** "
        f"ones (Gaussian fitted to the real ones: mean + full covariance), dim {s['dim']}, "
        f"metric `{s['metric']}`, K = {s['k']}, n_jobs = {s['n_jobs']}, one thread. Queries: "
        f"{s['queries']} real user embeddings; recall@{s['k']} vs exact search on "
        f"{s['recall_queries']} of them.",
        "",
        f"Machine: {m['cpu_count']} x {m['cpu_model']}, load at start {m['load_average_at_start']}"
        f" — {m['note']}.",
        "",
        f"Exact search (NumPy, batched): {report['exact_search_ms_per_query_batched']:.1f} ms per "
        f"query. Share of real items in the exact top-{s['k']}: "
        f"{report['data']['real_items_in_exact_top_k']:.3f} (real mean norm "
        f"{report['data']['real_norm_mean']:.3f}, synthetic "
        f"{report['data']['synthetic_norm_mean'] or 0:.3f}).",
        "",
        "| n_trees | build s | add s | file MiB | search_k | queries | median ms | p99 ms "
        "| recall@K |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in report["builds"]:
        for q in b["queries"]:
            lines.append(
                f"| {b['n_trees']} | {b['build_s']:.1f} | {b['add_items_s']:.1f} | "
                f"{b['file_mib']} | {q['search_k']:,} | {q['queries']} | {q['median_ms']:.2f} | "
                f"{q['p99_ms']:.2f} | {q['recall']:.3f} |"
            )
    lines += ["", f"Memory: {s['memory_probe']}. Figures of the index-file mapping:", ""]
    lines += ["| n_trees | touch | Rss MiB (each) | Pss MiB (each) | sum Rss | sum Pss | file |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for b in report["builds"]:
        for mem in b["memory"]:
            lines.append(
                f"| {b['n_trees']} | {mem['touch']} | {mem['index_mapping_rss_mib']} | "
                f"{mem['index_mapping_pss_mib']} | {mem['sum_rss_mib']} | {mem['sum_pss_mib']} |"
                f" {mem['file_mib']} |"
            )
    t = report["targets"]
    lines += ["", f"Targets: p99 < {t['p99_ms_below']} ms and recall >= {t['recall_at_least']}: "]
    if t["meets_both"]:
        best = t["meets_both"]
        lines[-1] += (
            f"**met** at n_trees {best['n_trees']}, search_k {best['search_k']:,} "
            f"(p99 {best['p99_ms']:.2f} ms, recall {best['recall']:.3f})."
        )
    else:
        lines[-1] += "**not met together** by any measured setting."
        for key, label in (
            ("fastest_meeting_recall", "Fastest reaching the recall target"),
            ("best_recall_meeting_p99", "Best recall within the p99 target"),
        ):
            row = t[key]
            lines.append(
                f"- {label}: "
                + (
                    f"n_trees {row['n_trees']}, search_k {row['search_k']:,}: p99 "
                    f"{row['p99_ms']:.2f} ms, recall {row['recall']:.3f}"
                    if row
                    else "none"
                )
            )
    for e in report.get("extrapolation_to_1m", []):
        lines.append(
            f"- {e['label']} ({e['from_items']:,} → {e['to_items']:,}): build "
            f"{e['build_s']:.0f} s, file {e['file_bytes'] / 2**20:.0f} MiB ({e['method']})"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--retrieval", type=Path, default=Path("build/retrieval"))
    parser.add_argument("--items", type=int, default=FULL_SCALE)
    parser.add_argument("--trees", type=int, nargs="+", default=[10, 25])
    parser.add_argument("--search-k", type=int, nargs="+", default=list(DEFAULT_SEARCH_K))
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--k", type=int, default=500)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-seconds-per-setting",
        type=float,
        default=12.0,
        help="stop timing a search_k after this long (once the recall queries are done)",
    )
    parser.add_argument(
        "--probe-search-k",
        type=int,
        default=PRODUCTION_SEARCH_K,
        help="search_k of the memory probe's touching queries",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="for the index files")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "annoy_scale.json")
    args = parser.parse_args(argv)
    with threadpoolctl.threadpool_limits(1):
        report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
