"""Step 6 of the offline pipeline: the offline evaluation report on the test period.

Every method ranks items for the same queries (users buying in the test period, at their first
test-period purchase; see :mod:`triton_models.dataset`) and is scored against everything the
user bought in the rest of the test period (:mod:`triton_models.metrics`):

- ``popularity``: the catalogue by popularity as of ``test_start``;
- ``repeat_purchase``: the user's past items by order count (then recency), then popularity;
- ``retrieval_only``: all items by ALS score (user · item), popularity for users without one;
- ``ranker_vN (fp32|int8)``: the ranker's order of the candidate set (retrieval top-N, past
  items, popular items); relevant items outside the candidates count as misses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from feature_service.definitions import FEATURE_NAMES
from triton_models.dataset import RankingSet
from triton_models.metrics import ndcg_at_k, rank_by_score, ranking_metrics

DEPTH = 100
"""Length of the baseline lists (MRR looks at most this deep)."""


def popularity_lists(
    popularity: npt.NDArray[np.float32], queries: int
) -> list[npt.NDArray[np.int32]]:
    """The same top-``DEPTH`` popular list for every query."""
    top = np.argsort(-popularity, kind="stable")[:DEPTH].astype(np.int32)
    return [top] * queries


def repeat_purchase_lists(
    test: RankingSet, popularity: npt.NDArray[np.float32]
) -> list[npt.NDArray[np.int32]]:
    """Past items by order count then recency (from the features), then popular items."""
    count = test.features[:, FEATURE_NAMES.index("cross_user_item_log_count")]
    days = test.features[:, FEATURE_NAMES.index("cross_user_item_days_since")]
    # Lexicographic: more orders first, then more recent; unbought candidates score below.
    score = count * 1e3 - days
    score = np.where(count > 0, score, -np.inf).astype(np.float64)
    ranked = rank_by_score(test.positions, score, test.offsets)
    pop = popularity_lists(popularity, 1)[0]
    lists = []
    for q, order in enumerate(ranked):
        rows = slice(test.offsets[q], test.offsets[q + 1])
        owned = order[: int((count[rows] > 0).sum())]
        lists.append(np.concatenate([owned, pop[~np.isin(pop, owned)]])[:DEPTH])
    return lists


def retrieval_lists(
    test: RankingSet, item_vectors: npt.NDArray[np.float32], popularity: npt.NDArray[np.float32]
) -> list[npt.NDArray[np.int32]]:
    """All items by ALS score; users without an embedding get the popular list."""
    pop = popularity_lists(popularity, 1)[0]
    scores = test.user_vectors @ item_vectors.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :DEPTH].astype(np.int32)
    return [top[q] if test.user_vectors[q].any() else pop for q in range(len(test))]


def paired_bootstrap(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], rounds: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean of ``a - b`` over queries with a 95% bootstrap interval (queries resampled)."""
    rng = np.random.default_rng(seed)
    diff = a - b
    samples = rng.integers(0, len(diff), size=(rounds, len(diff)))
    means = diff[samples].mean(axis=1)
    return {
        "mean_diff": float(diff.mean()),
        "ci95_low": float(np.quantile(means, 0.025)),
        "ci95_high": float(np.quantile(means, 0.975)),
    }


def per_query_ndcg(
    lists: list[npt.NDArray[np.int32]], relevant: list[npt.NDArray[np.int32]]
) -> npt.NDArray[np.float64]:
    """NDCG@10 per query (queries without relevant items get 0)."""
    return np.asarray(
        [ndcg_at_k(r, rel, 10) if len(rel) else 0.0 for r, rel in zip(lists, relevant, strict=True)]
    )


def evaluate(
    test: RankingSet,
    popularity: npt.NDArray[np.float32],
    item_vectors: npt.NDArray[np.float32],
    model_scores: Mapping[str, npt.NDArray[np.float32]],
) -> dict[str, Any]:
    """Metrics of the baselines and of each ``model_scores`` entry (scores per test row)."""
    lists: dict[str, list[npt.NDArray[np.int32]]] = {
        "popularity": popularity_lists(popularity, len(test)),
        "repeat_purchase": repeat_purchase_lists(test, popularity),
        "retrieval_only": retrieval_lists(test, item_vectors, popularity),
    }
    for name, scores in model_scores.items():
        lists[name] = rank_by_score(test.positions, scores, test.offsets)
    metrics = {name: ranking_metrics(ranked, test.relevant, k=10) for name, ranked in lists.items()}
    per_query = {name: per_query_ndcg(ranked, test.relevant) for name, ranked in lists.items()}
    candidate_recall = float(
        np.mean(
            [
                np.isin(rel, test.positions[test.offsets[q] : test.offsets[q + 1]]).mean()
                for q, rel in enumerate(test.relevant)
                if len(rel)
            ]
        )
    )
    return {"metrics": metrics, "per_query_ndcg": per_query, "candidate_recall": candidate_recall}


def targets(metrics: Mapping[str, Mapping[str, float]], rankers: list[str]) -> dict[str, bool]:
    """The issue's targets: each ranker >= 1.5x popularity and above retrieval-only."""
    pop = metrics["popularity"]["ndcg@10"]
    retrieval = metrics["retrieval_only"]["ndcg@10"]
    result = {}
    for name in rankers:
        ndcg = metrics[name]["ndcg@10"]
        result[f"{name}: ndcg@10 >= 1.5x popularity"] = ndcg >= 1.5 * pop
        result[f"{name}: ndcg@10 > retrieval_only"] = ndcg > retrieval
    return result


def markdown(report: Mapping[str, Any]) -> str:
    """The human-readable report."""
    lines = ["# Offline evaluation (test period)", ""]
    period = report["test_period"]
    lines += [
        f"Test period {period['start']} to {period['end']} (exclusive); "
        f"{int(report['metrics']['popularity']['queries'])} queries "
        "(users buying in the period, at their first purchase). Relevance: items bought in the "
        "rest of the period. MRR looks 100 deep. Plots: skipped (matplotlib is not installed).",
        "",
        "| method | NDCG@10 | Recall@10 | HR@10 | MRR |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in report["metrics"].items():
        lines.append(
            f"| {name} | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} | {m['hr@10']:.4f} "
            f"| {m['mrr']:.4f} |"
        )
    lines += [
        "",
        f"Candidate-set recall (relevant items among the ranker's candidates): "
        f"{report['candidate_recall']:.4f}",
        "",
        "## Targets",
        "",
    ]
    for target, met in report["targets"].items():
        lines.append(f"- {'met' if met else 'MISSED'}: {target}")
    lines += ["", "## v2 vs v3 (FP32), paired bootstrap over queries", ""]
    diff = report["v2_minus_v3"]
    lines.append(
        f"NDCG@10 v2 - v3 = {diff['mean_diff']:+.4f} "
        f"(95% CI {diff['ci95_low']:+.4f} .. {diff['ci95_high']:+.4f})"
    )
    lines += ["", "## Quantization", ""]
    for name, q in report["quantization"].items():
        lines.append(
            f"- {name}: kept {q['method']} INT8; test NDCG@10 FP32 {q['fp32_ndcg@10']:.4f}, "
            f"INT8 {q['int8_ndcg@10']:.4f} (relative drop {q['relative_drop']:+.4%}, "
            f"within 1%: {q['within_1pct']})"
        )
    lines += ["", "## Retrieval (test period, new items only)", ""]
    for key, value in report.get("retrieval", {}).items():
        lines.append(f"- {key}: {value}")
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], out_dir: Path) -> None:
    """``evaluation.json`` and ``evaluation.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (out_dir / "evaluation.md").write_text(markdown(report))
