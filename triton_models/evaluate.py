"""Step 6 of the offline pipeline: the offline evaluation report on the test period.

Every method ranks items for the same queries (users buying in the test period, at their first
test-period purchase; see :mod:`triton_models.dataset`) and is scored against everything the
user bought in the rest of the test period (:mod:`triton_models.ranking_quality`):

- ``popularity``: the catalogue by popularity as of ``test_start``;
- ``repeat_purchase``: the user's past items by order count (then recency), then popularity;
- ``retrieval_only``: all items by ALS score (user · item), popularity for users without one;
- ``popularity_skip_own``: the popular list without the user's own past items;
- ``item_to_item``: co-purchase neighbours (cosine over customers, ``implicit``'s
  ``CosineRecommender`` on purchases before ``test_start``) of the user's past items, own
  items skipped, then popularity;
- ``ranker_vN (fp32|int8)``: the ranker's order of the candidate set (retrieval top-N, past
  items, popular items); relevant items outside the candidates count as misses;
- ``discovery_vN (fp32|int8)``: the discovery model's order of the candidates the user never
  bought (:mod:`triton_models.discovery`);
- the surfaces as served (:mod:`feature_service.surfaces`): ``BUY_AGAIN`` (today's ranker),
  ``DISCOVER`` (the discovery model), ``MIXED`` (discovery slots per customer from both heads'
  probabilities at the served weight) and, for comparison, MIXED with 1 to 5 fixed slots.

Every list is scored overall, on re-orders and on products new to the user apart
(:func:`triton_models.ranking_quality.segment_metrics`), with its share of own items and its
catalogue coverage.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from feature_service.definitions import FEATURE_NAMES
from feature_service.surfaces import (
    DEFAULT_DISCOVERY_SLOTS as FIXED_SLOTS,
)
from feature_service.surfaces import (
    DISCOVERY_WEIGHT,
    Scored,
    discovery_slots_for,
    mixed_order,
)
from triton_models.config import EVALUATION_REPORT
from triton_models.dataset import RankingSet
from triton_models.discovery import discovery_lists
from triton_models.ranking_quality import (
    hit_rate_at_k,
    ndcg_at_k,
    rank_by_score,
    ranking_metrics,
    recall_at_k,
    segment_metrics,
    split_by_history,
)

DEPTH = 100
"""Length of the baseline lists (MRR looks at most this deep)."""
ITEM_NEIGHBOURS = 20
"""Co-purchase neighbours kept per item by the item-to-item baseline (implicit's default; 100
and 500 measured lower discovery recall on the test period: 0.035 and 0.036 against 0.043)."""
TODAY = "ranker_v2_int8"
"""The list served today (the default model, quantized): BUY_AGAIN, and MIXED's base."""
DISCOVERY = "discovery_v1_int8"
"""The model behind DISCOVER and MIXED's discovery slots."""
MASKED = f"{TODAY} own items masked"
"""Today's ranker on the candidates new to the user: the filter, not a separate objective."""
MIXED_SLOTS = (1, 2, 3, 4, 5)
"""Fixed discovery slots the report measures MIXED with (the served fallback is one of them)."""
WEIGHT_GRID = tuple(round(0.01 * i, 2) for i in range(1, 31))
"""Discovery weights the validation queries choose MIXED's from (0.01 to 0.30)."""
RECALL_BOUND = 0.95
"""MIXED's overall recall@10 must stay at this share of the ranker list's (the issue's 5%)."""


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


def popularity_skip_own_lists(
    test: RankingSet, popularity: npt.NDArray[np.float32]
) -> list[npt.NDArray[np.int32]]:
    """The popular list without each user's own past items."""
    top = np.argsort(-popularity, kind="stable").astype(np.int32)
    return [top[~np.isin(top, past)][:DEPTH] for past in test.history]


def purchase_matrix(
    users: npt.NDArray[Any], positions: npt.NDArray[np.int32], n_items: int
) -> sp.csr_matrix:
    """Binary customers x items matrix of purchase lines (user id and item position each)."""
    _, rows = np.unique(users, return_inverse=True)
    matrix = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, positions)),
        shape=(int(rows.max()) + 1 if len(rows) else 0, n_items),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def item_to_item_lists(
    test: RankingSet, purchases: sp.csr_matrix, popularity: npt.NDArray[np.float32]
) -> list[npt.NDArray[np.int32]]:
    """Co-purchase neighbours of each user's past items (cosine over customers), own items
    skipped, then popular items; users without a history get the popular list."""
    from implicit.nearest_neighbours import CosineRecommender
    from implicit.utils import ParameterWarning

    n_items = purchases.shape[1]
    model = CosineRecommender(K=ITEM_NEIGHBOURS, num_threads=1)
    with warnings.catch_warnings():
        # implicit 0.7.3 normalises our CSR input into a COO matrix itself under SciPy 1.17,
        # then warns about the conversion it just made.
        warnings.simplefilter("ignore", ParameterWarning)
        model.fit(purchases, show_progress=False)
    rows = np.repeat(np.arange(len(test)), [len(h) for h in test.history])
    cols = np.concatenate([*test.history, np.empty(0, np.int32)])
    owned = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(test), n_items)
    )
    ids, scores = model.recommend(
        np.arange(len(test)),
        owned,
        N=DEPTH,
        filter_already_liked_items=True,
        recalculate_user=True,
    )
    top = np.argsort(-popularity, kind="stable").astype(np.int32)
    lists = []
    for q, past in enumerate(test.history):
        near = ids[q][scores[q] > 0].astype(np.int32)
        fill = top[~np.isin(top, np.concatenate([past, near]))]
        lists.append(np.concatenate([near, fill])[:DEPTH])
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


def mixed_lists(
    data: RankingSet,
    buy_again: list[npt.NDArray[np.int32]],
    discover: list[npt.NDArray[np.int32]],
    ranker_scores: npt.NDArray[np.float32],
    discovery_scores: npt.NDArray[np.float32],
    weight: float,
) -> list[npt.NDArray[np.int32]]:
    """MIXED as served: per query, :func:`feature_service.surfaces.discovery_slots_for` from
    both heads' scores of the query's rows, then :func:`mixed_order` with that many slots."""
    lists = []
    for q, (ranker, new, past) in enumerate(zip(buy_again, discover, data.history, strict=True)):
        rows = slice(data.offsets[q], data.offsets[q + 1])
        positions = data.positions[rows]
        slots = discovery_slots_for(
            ranker,
            new,
            past,
            10,
            Scored(positions, ranker_scores[rows]),
            Scored(positions, discovery_scores[rows]),
            weight,
        )
        lists.append(mixed_order(ranker, new, past, 10, slots))
    return lists


def per_query_recall_and_hit(
    lists: list[npt.NDArray[np.int32]], data: RankingSet
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per query with relevant items, recall@10 on all of them; per query with new products,
    whether the first 10 hold one (the two MIXED figures, query by query)."""
    _, new = split_by_history(data.relevant, data.history)
    pairs = zip(lists, data.relevant, strict=True)
    recall = [recall_at_k(r, rel, 10) for r, rel in pairs if len(rel)]
    hit = [hit_rate_at_k(r, rel, 10) for r, rel in zip(lists, new, strict=True) if len(rel)]
    return np.asarray(recall), np.asarray(hit)


def surface_lists(
    test: RankingSet,
    buy_again: list[npt.NDArray[np.int32]],
    discover: list[npt.NDArray[np.int32]],
    ranker_scores: npt.NDArray[np.float32] | None = None,
    discovery_scores: npt.NDArray[np.float32] | None = None,
    discovery_weight: float = DISCOVERY_WEIGHT,
) -> dict[str, list[npt.NDArray[np.int32]]]:
    """BUY_AGAIN, DISCOVER and MIXED (each number of fixed discovery slots, and, given both
    heads' scores of every row, ``MIXED`` as served) as the gateway blends them, from the
    ranker's and the discovery model's lists."""
    lists = {"BUY_AGAIN": buy_again, "DISCOVER": discover}
    if ranker_scores is not None and discovery_scores is not None:
        lists["MIXED"] = mixed_lists(
            test, buy_again, discover, ranker_scores, discovery_scores, discovery_weight
        )
    for slots in MIXED_SLOTS:
        lists[f"MIXED ({slots} discovery slots)"] = [
            mixed_order(ranker, new, past, 10, slots)
            for ranker, new, past in zip(buy_again, discover, test.history, strict=True)
        ]
    return lists


def choose_discovery_weight(
    valid: RankingSet,
    ranker_scores: npt.NDArray[np.float32],
    discovery_scores: npt.NDArray[np.float32],
    grid: tuple[float, ...] = WEIGHT_GRID,
) -> dict[str, Any]:
    """MIXED's discovery weight chosen on ``valid`` (queries no model was trained on, from the
    training period): of the weights in ``grid`` whose MIXED keeps overall recall@10 within
    :data:`RECALL_BOUND` of the ranker's list, the one reaching a new product for the most
    customers (the smallest on a tie); None when no weight keeps it.

    Returns:
        ``weight`` and, per weight, MIXED's ``recall_ratio`` and new-product ``hr@10``.
    """
    buy_again = rank_by_score(valid.positions, ranker_scores, valid.offsets)
    discover = discovery_lists(valid, discovery_scores)
    base = ranking_metrics(buy_again, valid.relevant)["recall@10"]
    _, new = split_by_history(valid.relevant, valid.history)
    measured = {}
    for weight in grid:
        mixed = mixed_lists(valid, buy_again, discover, ranker_scores, discovery_scores, weight)
        measured[weight] = {
            "recall_ratio": ranking_metrics(mixed, valid.relevant)["recall@10"] / base,
            "hr@10": ranking_metrics(mixed, new)["hr@10"],
        }
    within = [w for w in grid if measured[w]["recall_ratio"] >= RECALL_BOUND]
    chosen = max(within, key=lambda w: (measured[w]["hr@10"], -w)) if within else None
    return {"weight": chosen, "validation_queries": len(valid), "grid": measured}


def evaluate(
    test: RankingSet,
    popularity: npt.NDArray[np.float32],
    item_vectors: npt.NDArray[np.float32],
    model_scores: Mapping[str, npt.NDArray[np.float32]],
    discovery_scores: Mapping[str, npt.NDArray[np.float32]] | None = None,
    purchases: sp.csr_matrix | None = None,
    discovery_weight: float = DISCOVERY_WEIGHT,
) -> dict[str, Any]:
    """Metrics of the baselines and of each ``model_scores`` / ``discovery_scores`` entry
    (scores per test row); ``purchases`` (customers x items before the test period) adds the
    item-to-item baseline. With today's ranker and a discovery model, the surfaces too, MIXED
    at ``discovery_weight`` (the one the gateway serves)."""
    lists: dict[str, list[npt.NDArray[np.int32]]] = {
        "popularity": popularity_lists(popularity, len(test)),
        "repeat_purchase": repeat_purchase_lists(test, popularity),
        "retrieval_only": retrieval_lists(test, item_vectors, popularity),
        "popularity_skip_own": popularity_skip_own_lists(test, popularity),
    }
    if purchases is not None:
        lists["item_to_item"] = item_to_item_lists(test, purchases, popularity)
    for name, scores in model_scores.items():
        lists[name] = rank_by_score(test.positions, scores, test.offsets)
    for name, scores in (discovery_scores or {}).items():
        lists[name] = discovery_lists(test, scores)
    surfaces: dict[str, list[npt.NDArray[np.int32]]] = {}
    if TODAY in lists and DISCOVERY in lists:
        # The filter the discovery model is measured against: today's ranker, own items masked.
        lists[MASKED] = discovery_lists(test, model_scores[TODAY])
        heads = (model_scores[TODAY], (discovery_scores or {})[DISCOVERY])
        surfaces = surface_lists(test, lists[TODAY], lists[DISCOVERY], *heads, discovery_weight)
    metrics = {name: ranking_metrics(ranked, test.relevant, k=10) for name, ranked in lists.items()}
    n_items = len(popularity)
    segments = {
        name: segment_metrics(ranked, test.relevant, test.history, n_items)
        for name, ranked in {**lists, **surfaces}.items()
    }
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
    _, new = split_by_history(test.relevant, test.history)
    discover_vs_masked = (
        paired_bootstrap(per_query_ndcg(lists[DISCOVERY], new), per_query_ndcg(lists[MASKED], new))
        if MASKED in lists
        else None
    )
    mixed_vs_fixed = None
    if "MIXED" in surfaces:
        served = per_query_recall_and_hit(surfaces["MIXED"], test)
        fixed = per_query_recall_and_hit(surfaces[f"MIXED ({FIXED_SLOTS} discovery slots)"], test)
        mixed_vs_fixed = {
            "overall recall@10": paired_bootstrap(served[0], fixed[0]),
            "new products hr@10": paired_bootstrap(served[1], fixed[1]),
        }
    new_candidate_recall = float(
        np.mean(
            [
                np.isin(rel, test.positions[test.offsets[q] : test.offsets[q + 1]]).mean()
                for q, rel in enumerate(new)
                if len(rel)
            ]
        )
    )
    return {
        "metrics": metrics,
        "segments": segments,
        "per_query_ndcg": per_query,
        "candidate_recall": candidate_recall,
        "new_item_candidate_recall": new_candidate_recall,
        "discover_minus_masked_ranker": discover_vs_masked,
        "mixed_minus_fixed_slots": mixed_vs_fixed,
    }


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


def discovery_targets(segments: Mapping[str, Mapping[str, Any]]) -> dict[str, bool]:
    """The discovery issue's offline targets (those a served list has to meet again)."""
    if "DISCOVER" not in segments:
        return {}

    def recall(name: str, segment: str) -> float:
        return float(segments[name][segment]["recall@10"])

    discover = recall("DISCOVER", "discovery")
    mixed = "MIXED"
    result = {
        "DISCOVER recall@10 on new products >= 1.25x popularity_skip_own": discover
        >= 1.25 * recall("popularity_skip_own", "discovery"),
        f"{mixed} discovery HR@10 >= 0.35": segments[mixed]["discovery"]["hr@10"] >= 0.35,
        f"{mixed} overall recall@10 within 5% of today's ({TODAY})": recall(mixed, "overall")
        >= 0.95 * recall("BUY_AGAIN", "overall"),
        f"BUY_AGAIN re-order recall@10 not below today's ({TODAY})": recall("BUY_AGAIN", "reorder")
        >= recall(TODAY, "reorder"),
    }
    if "item_to_item" in segments:
        result["DISCOVER recall@10 on new products > item_to_item"] = discover > recall(
            "item_to_item", "discovery"
        )
    return result


def segment_table(segments: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown rows: each list overall, on re-orders and on new products, with own-item share
    and coverage."""
    lines = [
        "| list | recall@10 | re-orders: recall@10 | HR@10 | NDCG@10 | new products: recall@10 "
        "| HR@10 | NDCG@10 | own items in top 10 | catalogue coverage@10 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in segments.items():
        re, new = m["reorder"], m["discovery"]
        lines.append(
            f"| {name} | {m['overall']['recall@10']:.4f} | {re['recall@10']:.4f} "
            f"| {re['hr@10']:.3f} | {re['ndcg@10']:.4f} | {new['recall@10']:.4f} "
            f"| {new['hr@10']:.3f} | {new['ndcg@10']:.4f} | {m['own_item_share@10']:.1%} "
            f"| {m['coverage@10']:.1%} |"
        )
    return lines


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
    segments = report.get("segments")
    if segments:
        any_list = next(iter(segments.values()))
        lines += [
            "",
            "## Re-orders and discovery",
            "",
            f"The same lists scored on re-orders (relevant items the customer bought before; "
            f"{int(any_list['reorder']['queries'])} queries) and on products new to the "
            f"customer ({int(any_list['discovery']['queries'])} queries), as served: an own "
            "item is a miss on the discovery side. Share of top-10 slots on own past items; "
            "catalogue coverage: share of all items in at least one top 10. New products "
            "among the ranker's candidates (the ceiling of any model reordering them): "
            f"{report['new_item_candidate_recall']:.4f}.",
            "",
            *segment_table(segments),
            "",
            "## Discovery targets",
            "",
        ]
        for target, met in report.get("discovery_targets", {}).items():
            lines.append(f"- {'met' if met else 'MISSED'}: {target}")
        choice = report.get("discovery_weight")
        if choice:
            lines += [
                "",
                "## MIXED's discovery weight",
                "",
                f"Chosen on {choice['validation_queries']} validation queries (training period): "
                f"{choice['weight']}, which the gateway serves (none: {DISCOVERY_WEIGHT}). Per "
                "weight, MIXED's overall recall@10 as a share of the ranker list's, and its "
                "new-product HR@10:",
                "",
                "| weight | recall ratio | HR@10 |",
                "|---:|---:|---:|",
                *(
                    f"| {w} | {m['recall_ratio']:.3f} | {m['hr@10']:.3f} |"
                    for w, m in choice["grid"].items()
                ),
            ]
        against = report.get("mixed_minus_fixed_slots")
        if against:
            lines += ["", f"MIXED - MIXED ({FIXED_SLOTS} discovery slots), paired bootstrap:", ""]
            lines += [
                f"- {figure}: {d['mean_diff']:+.4f} (95% CI {d['ci95_low']:+.4f} .. "
                f"{d['ci95_high']:+.4f})"
                for figure, d in against.items()
            ]
        diff = report.get("discover_minus_masked_ranker")
        if diff:
            lines += [
                "",
                f"Discovery NDCG@10, {DISCOVERY} - {MASKED} = {diff['mean_diff']:+.4f} "
                f"(95% paired bootstrap CI {diff['ci95_low']:+.4f} .. {diff['ci95_high']:+.4f}).",
            ]
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
    (out_dir / EVALUATION_REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (out_dir / "evaluation.md").write_text(markdown(report))
