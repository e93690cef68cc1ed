"""The discovery table of issue #22, measured through the served gRPC API on the test period.

The offline evaluation (`triton_models/evaluate.py`) scores each surface's list from the
training code's candidates with the blend code. This asks the real thing instead: Triton with
the models `make models` built (trained before the test period) and a gateway whose artefacts
stop where the test period starts, so no purchase it recommends from is one it is scored on:

- purchases, returns, customers and the catalogue (price, popularity, availability) rebuilt by
  ingest's own code from the raw lines before the test period, every item of the served
  catalogue kept at its position;
- retrieval embeddings fitted on the purchases before the test period (the same fit the offline
  test set uses; checked equal to `build/datasets/test_item_embeddings.npy`);
- the data clock replayed to the cut, so "now" for the features is the test period's start
  (within a week: the replay moves time by whole weeks).

Every returning customer of the test period (`build/datasets/test.npz`) is asked for
BUY_AGAIN, DISCOVER and MIXED (10 items, no experiment running, so every list is the default
model's), and each list is scored with the offline report's segment metrics (overall, on
re-orders, on products new to the customer, own-item share, catalogue coverage) beside the
offline figures of the same lists.

    python -m benchmarks.surfaces_api            # about 3 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import numpy.typing as npt
import pandas as pd
import yaml
from recsys.v1 import recommendation_pb2 as pb
from recsys.v1 import recommendation_pb2_grpc as pb_grpc

from benchmarks.harness.procs import LOCAL_CONFIG, REPO, local_system
from benchmarks.harness.report import RESULTS_DIR, machine_description
from feature_service.surfaces import DEFAULT_DISCOVERY_SLOTS
from triton_models import ingest, retrieval
from triton_models.dataset import RankingSet, load_data, tables_as_of
from triton_models.evaluate import segment_table
from triton_models.pipeline import PipelineOptions
from triton_models.ranking_quality import segment_metrics

BUILD = REPO / "build"
SURFACES: dict[str, int] = {
    "BUY_AGAIN": pb.SURFACE_BUY_AGAIN,
    "DISCOVER": pb.SURFACE_DISCOVER,
    "MIXED": pb.SURFACE_MIXED,
}
NUM_ITEMS = 10


def heldout_artifacts(build: Path, raw_data: Path, out: Path) -> pd.Timestamp:
    """Writes `out/data`, `out/retrieval` and `out/triton` (a link to the built repositories):
    the gateway's artefacts as they would have been at the start of the test period.

    Returns:
        The cut (the test period's start).
    """
    data = load_data(build / "data", raw_data)
    cut = data.split.test_start
    # The served catalogue's items at their positions (the models and embeddings index them).
    tables = tables_as_of(data, cut)
    items = tables.items
    ingest.write_tables(tables, out / "data")

    opts = PipelineOptions()
    embeddings = retrieval.fit_als(data.events, len(data.items), cut, opts.als)
    offline = np.load(build / "datasets" / "test_item_embeddings.npy")
    if not np.allclose(embeddings.items, offline, atol=1e-5):
        raise RuntimeError("the ALS fit at the cut differs from the offline test set's")
    metadata = json.loads((build / "retrieval" / "metadata.json").read_text())
    index = retrieval.build_annoy(embeddings.items, metadata["n_trees"], opts.als.seed)
    retrieval.write_embeddings(embeddings, index, items["item_id"].tolist(), out / "retrieval")
    index.unload()
    metadata.update(
        users=len(embeddings.user_ids),
        serving_trained_on={"start": str(data.split.data_start), "end": str(cut)},
    )
    (out / "retrieval" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (out / "triton").symlink_to((build / "triton").resolve(), target_is_directory=True)
    return cut


def gateway_config(artifacts: Path, out: Path) -> Path:
    """The `make run` profile on `artifacts`, without experiments (every list is the default
    model's, as the offline table's are)."""
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    config["model"]["artifacts_dir"] = str(artifacts)
    config["model"]["data_dir"] = str((REPO / config["model"]["data_dir"]).resolve())
    config["ab_testing"]["experiments"] = []
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


async def ask(
    target: str, users: Sequence[str], surface: int, concurrency: int
) -> tuple[list[list[str]], list[str]]:
    """Each user's list of `surface` and why it was degraded ("" when it was not)."""
    lists: list[list[str]] = [[] for _ in users]
    degraded = [""] * len(users)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(users)):
        queue.put_nowait(i)
    async with grpc.aio.insecure_channel(target) as channel:
        # The asyncio stub type exists only in the generated type stubs (.pyi).
        stub = cast(
            "pb_grpc.RecommendationServiceAsyncStub", pb_grpc.RecommendationServiceStub(channel)
        )

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                request = pb.RecommendRequest(
                    user_id=users[i],
                    num_items=NUM_ITEMS,
                    surface=surface,  # type: ignore[arg-type]
                )
                reply = await stub.Recommend(request, timeout=10.0)
                lists[i] = [r.item_id for r in reply.recommendations]
                degraded[i] = " ".join(pb.DegradedReason.Name(r) for r in reply.degraded_reasons)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lists, degraded


def positions_of(
    lists: Sequence[Sequence[str]], item_ids: Sequence[str]
) -> list[npt.NDArray[np.int32]]:
    """Item ids as catalogue positions (the offline report's encoding)."""
    position = {item: i for i, item in enumerate(item_ids)}
    return [np.asarray([position[item] for item in items], np.int32) for items in lists]


def offline_segments(report: Mapping[str, Any]) -> dict[str, Any]:
    """The offline evaluation's figures for the served lists (default MIXED slots)."""
    segments = report["segments"]
    mixed = "MIXED" if "MIXED" in segments else f"MIXED ({DEFAULT_DISCOVERY_SLOTS} discovery slots)"
    return {
        "BUY_AGAIN": segments["BUY_AGAIN"],
        "DISCOVER": segments["DISCOVER"],
        "MIXED": segments[mixed],
    }


def _degraded(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in counts.items()) or "none"


def markdown(result: Mapping[str, Any]) -> str:
    rows = {f"{name}, served (gRPC)": m for name, m in result["served"].items()}
    rows |= {f"{name}, offline": m for name, m in result["offline"].items()}
    rows |= {name: m for name, m in result["baselines"].items()}
    machine = result["machine"]
    lines = [
        f"# Surfaces through the gRPC API, {result['started']}",
        "",
        f"Command: `{result['command']}`. Machine: {machine.get('cpu_count')} CPUs, "
        f"{machine.get('cpu_model', '')}.",
        f"Test period {result['test_period'][0]} to {result['test_period'][1]}; the gateway's "
        f"artefacts stop at its start. {result['users']} returning customers, each asked for "
        f"every surface ({NUM_ITEMS} items, no experiment); degraded answers: "
        f"{_degraded(result['degraded'])}.",
        "",
        *segment_table(rows),
        "",
        "Served lists go through the gateway's candidates (exact top-500 retrieval plus popular "
        "items), filters (out of stock at the cut) and re-rank; the offline lists are the "
        "training code's candidates with the same blend code.",
    ]
    return "\n".join(lines) + "\n"


async def measure(
    target: str, test: RankingSet, item_ids: Sequence[str], concurrency: int
) -> tuple[dict[str, Any], Counter[str]]:
    """Every surface for every customer, scored; and the degraded answers by reason."""
    # Unmeasured first pass: a cold process (first Triton calls, first compiles of each
    # request shape) can outrun the ranker's 40 ms budget and answer from the fallback.
    await ask(target, test.user_ids[:200], pb.SURFACE_MIXED, concurrency)
    served: dict[str, Any] = {}
    degraded: Counter[str] = Counter()
    for name, surface in SURFACES.items():
        lists, reasons = await ask(target, test.user_ids, surface, concurrency)
        degraded.update(f"{name}: {reason}" for reason in reasons if reason)
        ranked = positions_of(lists, item_ids)
        served[name] = segment_metrics(ranked, test.relevant, test.history, len(item_ids))
    return served, degraded


def run(args: argparse.Namespace) -> Path:
    started = datetime.now(UTC)
    test = RankingSet.load(BUILD / "datasets" / "test.npz")
    report = json.loads((BUILD / "reports" / "evaluation.json").read_text())
    item_ids = pd.read_parquet(BUILD / "data" / "items.parquet", columns=["item_id"])["item_id"]
    raw_data = (REPO / yaml.safe_load(LOCAL_CONFIG.read_text())["model"]["data_dir"]).resolve()
    with tempfile.TemporaryDirectory(prefix="surfaces-api-") as tmp:
        workdir = Path(tmp)
        cut = heldout_artifacts(BUILD, raw_data, workdir / "artifacts")
        config = gateway_config(workdir / "artifacts", workdir / "gateway.yaml")
        with local_system(
            workdir / "system",
            config=config,
            extra_env={"RECSYS__SERVING__PROCESSES": "1"},
            prediction_cache=True,
        ) as system:
            served, degraded = asyncio.run(
                measure(system.target, test, item_ids.tolist(), args.concurrency)
            )
    result = {
        "started": started.isoformat(timespec="seconds"),
        "command": "python -m benchmarks.surfaces_api",
        "machine": machine_description(),
        "test_period": [str(cut), report["test_period"]["end"]],
        "users": len(test.user_ids),
        "degraded": dict(degraded),
        "served": served,
        "offline": offline_segments(report),
        "baselines": {
            name: report["segments"][name]
            for name in ("ranker_v2_int8", "popularity_skip_own", "item_to_item")
            if name in report["segments"]
        },
    }
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS_DIR / f"surfaces-api-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    md_path = json_path.with_suffix(".md")
    md_path.write_text(markdown(result))
    return md_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.surfaces_api", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    md_path = run(build_parser().parse_args(argv))
    print(md_path.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
