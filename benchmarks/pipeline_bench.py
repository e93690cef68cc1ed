"""The gateway's own work per Recommend request, everything but the Triton call.

Runs the real stages in process on the real catalogue, retrieval index and purchase histories
(`make models` first) for requests of real users with 500 retrieval candidates: assign, user
features (embedded store), candidates (Annoy + history + popular), filter, ranking features
(the shared definitions), ordering by a score vector standing in for Triton's answer, re-rank
(diversity, category cap) and the protobuf response, as gateway/recommender.py runs them (the
numeric steps are the compiled kernels of feature_service/kernels.py; a user's purchase state
is read from the per-user cache that recorded purchases replace). One core, median and p99 per
request and the median of each stage, written to benchmarks/results/pipeline_bench.json.
Target: median under 2 ms. `python -m benchmarks.kernel_bench` times each numeric step
against the NumPy code it replaced.

    python -m benchmarks.pipeline_bench [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.harness.report import machine_description
from feature_service.kernels import order_by_score
from gateway.config import load_settings
from gateway.resources import open_resources
from gateway.stages.assign import assign_variant
from gateway.stages.candidates import HISTORY_CANDIDATES, candidate_count
from gateway.stages.filter import filter_candidates
from gateway.stages.rerank import cap_per_category, diversify, truncate
from gateway.stages.types import Candidates, RequestContext

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# What each timed span covers, in order; the span at STAND_IN draws the stand-in for Triton's
# scores and is left out of every figure.
STAGES = ("assign and user features", "candidates", "filter", "ranking features",
          "order and re-rank", "response")  # fmt: skip
STAND_IN = 4


async def _measure(requests: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            REPO / "infra" / "config" / "local.yaml",
            {
                "RECSYS__MODEL__ARTIFACTS_DIR": str(REPO / "build"),
                "RECSYS__FEATURE_STORE__EMBEDDED__EVENT_LOG_PATH": f"{tmp}/events.sqlite3",
                "RECSYS__AB_TESTING__EXPOSURE_LOG_PATH": f"{tmp}/exposures.sqlite3",
                "RECSYS__MONITORING__METRICS__ENABLED": "false",
                "RECSYS__MODEL__RERANKER__DIVERSITY_WEIGHT": "0.3",
                "RECSYS__MODEL__RERANKER__MAX_PER_CATEGORY": "4",
            },
        )
        async with open_resources(settings) as resources:
            rec = resources.recommender
            ranker = rec.ranker
            index = rec.candidates.index
            if ranker is None or index is None:
                sys.exit("pipeline_bench: run `make models` first (no ranker or retrieval index)")
            users = list(index.user_row)[:: max(1, len(index.user_row) // requests)][:requests]
            rules = settings.model.reranker
            rng = np.random.default_rng(0)
            timings: list[float] = []
            stage_ms: dict[str, list[float]] = {stage: [] for stage in STAGES}
            candidate_counts: list[int] = []
            for i in range(len(users) * 2):
                user_id = users[i % len(users)]
                context = RequestContext(
                    device=1,
                    page=1,
                    locale="en-GB",
                    country="GB",
                    session_id="",
                    time=datetime.now(UTC),
                )
                marks = [time.perf_counter()]
                routed = assign_variant(user_id, rec.routing)
                assignment = routed.primary if routed is not None else None
                user = await rec.store.user_features(user_id, context.time)
                purchases = ranker.features.histories.purchases(user_id)
                history = purchases.history
                blocked = np.unique(np.concatenate([user.recent_viewed]))
                past = purchases.recent_items[:HISTORY_CANDIDATES]
                marks.append(time.perf_counter())
                count = candidate_count(500, 10, len(blocked))
                candidates = rec.candidates.retrieve(user_id, past, count)
                marks.append(time.perf_counter())
                kept = filter_candidates(candidates, blocked, resources.catalogue.available)
                marks.append(time.perf_counter())
                features = ranker.features.build(user_id, history, kept, context)
                marks.append(time.perf_counter())
                scores = rng.random(len(features), dtype=np.float32)  # Triton's answer
                marks.append(time.perf_counter())  # not a stage: excluded below
                order = order_by_score(scores)
                ranked = Candidates(kept.positions[order], scores[order])
                diverse = diversify(
                    ranked,
                    resources.catalogue.category,
                    rules.diversity_weight,
                    30,
                    index.unit_item_vectors,
                )
                items = truncate(
                    cap_per_category(diverse, resources.catalogue.category, rules.max_per_category),
                    10,
                )
                marks.append(time.perf_counter())
                rec.responses.build(items, "r", "ranker_v2/1", assignment, (), 0.0)
                marks.append(time.perf_counter())
                if i >= len(users):  # the first pass warms caches, like steady traffic
                    spans = np.diff(marks) * 1000
                    for stage, span in zip(STAGES, np.delete(spans, STAND_IN), strict=True):
                        stage_ms[stage].append(float(span))
                    timings.append(float(spans.sum() - spans[STAND_IN]))
                    candidate_counts.append(len(kept))
    ms = sorted(timings)
    return {
        "requests": len(ms),
        "median_ms": statistics.median(ms),
        "p99_ms": ms[int(0.99 * (len(ms) - 1))],
        "stage_median_ms": {stage: statistics.median(v) for stage, v in stage_ms.items()},
        "mean_candidates_after_filter": float(np.mean(candidate_counts)),
        "target_median_ms": 2.0,
        "target_met": statistics.median(ms) < 2.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="pipeline_bench", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    figures = asyncio.run(_measure(args.requests))
    report = {
        "benchmark": "gateway work per Recommend request (no Triton call)",
        "machine": {
            **machine_description(),
            "cores_used": 1,
            "python": platform.python_version(),
        },
        "settings": {
            "candidates": 500,
            "num_items": 10,
            "diversity_weight": 0.3,
            "max_per_category": 4,
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **figures,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "pipeline_bench.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
