"""The steps of the offline pipeline after ingest, each reading and writing folders of build/.

``recsys-models`` (:mod:`triton_models.cli`) runs them in order and skips a step whose inputs
(files, code and options) are unchanged:

======================  =========================================================
step                    writes
======================  =========================================================
retrieval               build/retrieval: items.ann, item_ids.txt, item_embeddings.npy,
                        user_embeddings.npy, user_ids.txt, metadata.json
datasets                build/datasets: train.npz, test.npz (+ test-time popularity and
                        item embeddings), datasets.json
rankers                 build/rankers/<name>: model.pt, training.json (the rankers and the
                        discovery model, :mod:`triton_models.discovery`)
export                  build/onnx/<name>: fp32.onnx, int8_dynamic.onnx, int8_static.onnx,
                        int8.onnx (the kept one), export.json
evaluation              build/reports/evaluation.{json,md}
triton                  build/triton/{local,production}: ranker_vN (ensembles), ranker_vN_onnx
                        (two heads: score and discovery_score), discovery_vN_onnx
======================  =========================================================
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from feature_service.definitions import FEATURE_NAMES, NUM_FEATURES, top_k_exact
from feature_service.surfaces import DISCOVERY_WEIGHT
from triton_models import export, repository, retrieval
from triton_models.dataset import (
    CandidateParams,
    RankingSet,
    build_ranking_set,
    item_snapshot,
    load_data,
)
from triton_models.discovery import DISCOVERY_MODELS, new_items_only
from triton_models.evaluate import (
    DISCOVERY,
    TODAY,
    choose_discovery_weight,
    discovery_targets,
    evaluate,
    paired_bootstrap,
    purchase_matrix,
    targets,
    write_report,
)
from triton_models.ranker_repositories import (
    DISCOVERY_OUTPUT,
    DiscoveryHead,
    ServingOptions,
    git_sha,
    write_discovery,
    write_ranker,
)
from triton_models.rankers import (
    RANKERS,
    RankerKind,
    TrainConfig,
    make_ranker,
    predict,
    split_users,
    train_ranker,
)
from triton_models.ranking_quality import rank_by_score, ranking_metrics

_log = logging.getLogger(__name__)
WINDOW = pd.Timedelta(days=28)
MODELS: dict[str, RankerKind] = {**RANKERS, **DISCOVERY_MODELS}
"""Every served model: the rankers, then the discovery models."""


def _objective(name: str, data: RankingSet) -> RankingSet:
    """The rows and targets ``name`` learns and is checked on: all candidates for a ranker,
    the candidates new to the user for a discovery model."""
    return new_items_only(data) if name in DISCOVERY_MODELS else data


@dataclass(frozen=True)
class PipelineOptions:
    """Everything that changes what the steps produce (hashed into each step's stamp)."""

    sample: int | None = None
    """Keep only the first N customers by id (tests); None for everyone."""
    als: retrieval.AlsParams = field(default_factory=retrieval.AlsParams)
    candidates: CandidateParams = field(default_factory=CandidateParams)
    train: TrainConfig = field(default_factory=TrainConfig)
    serving: ServingOptions = field(default_factory=ServingOptions)
    training_windows: int = 2
    """Label windows of 28 days for training, ending at test_start (the last is validation)."""
    valid_share: float = 0.15
    """Share of training queries (by user) held out for early stopping and INT8 selection."""
    annoy_k: int = 500
    annoy_target_overlap: float = 0.97
    annoy_grid_users: int = 200
    """Users whose queries measure the Annoy grid."""

    def as_json(self, without: tuple[str, ...] = ()) -> str:
        """Canonical JSON for hashing (progress bars do not change any output), leaving out the
        fields in `without` (those a step does not read)."""
        values = asdict(self)
        values["train"].pop("progress")
        for name in without:
            values.pop(name)
        return json.dumps(values, sort_keys=True, default=str)


def _json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def run_retrieval(tables: Path, data_dir: Path, out: Path, opts: PipelineOptions) -> dict[str, Any]:
    """ALS + Annoy: measured choice of Annoy settings, test recalls, serving artefacts."""
    started = time.perf_counter()
    data = load_data(tables, data_dir, opts.sample)
    split, events, n_items = data.split, data.events, len(data.items)
    k_values = (100, 500)

    popularity = item_snapshot(data, split.test_start).popularity

    def recalls(
        as_of: pd.Timestamp,
        end: pd.Timestamp,
        emb: retrieval.Embeddings,
        choice: retrieval.AnnoyChoice | None = None,
    ) -> tuple[dict[str, Any], retrieval.AnnoyChoice]:
        before = events.loc[events["timestamp"] < as_of]
        window = events.loc[(events["timestamp"] >= as_of) & (events["timestamp"] < end)]
        history = before.groupby("user_id")["position"].unique()
        bought = window.groupby("user_id")["position"].unique()
        users = sorted(set(history.index) & set(bought.index))
        owned = [np.asarray(history[u], np.int32) for u in users]
        relevant = [np.setdiff1d(bought[u], history[u]).astype(np.int32) for u in users]
        vectors = emb.user_vectors(users)
        k = max(k_values)
        exact = list(top_k_exact(vectors, emb.items, k, exclude=owned))
        popular = retrieval.top_k_popular(popularity, k, owned)
        if choice is None:
            # A fixed subset of users keeps the grid cheap; the overlap estimate barely moves.
            choice = retrieval.choose_annoy(
                emb.items,
                vectors[: opts.annoy_grid_users],
                min(opts.annoy_k, n_items),
                opts.annoy_target_overlap,
                seed=opts.als.seed,
            )
        index = retrieval.build_annoy(emb.items, choice.n_trees, opts.als.seed)
        approx = retrieval.annoy_top_k(index, vectors, k, choice.search_k, exclude=owned)
        index.unload()
        result: dict[str, Any] = {
            "users": len(users),
            "users_with_new_items": sum(1 for r in relevant if len(r)),
            "annoy_choice": {
                "n_trees": choice.n_trees,
                "search_k": choice.search_k,
                "overlap_at_k": choice.overlap,
                "k": min(opts.annoy_k, n_items),
                "query_ms": choice.query_ms,
                "grid": choice.grid,
            },
        }
        for k_ in k_values:
            result[f"recall@{k_}"] = {
                "annoy": retrieval.recall_at_k(approx, relevant, k_),
                "exact": retrieval.recall_at_k(exact, relevant, k_),
                "popularity": retrieval.recall_at_k(popular, relevant, k_),
            }
        return result, choice

    test_model = retrieval.fit_als(events, n_items, split.test_start, opts.als)
    test, annoy_choice = recalls(split.test_start, split.data_end, test_model)
    train_only = retrieval.fit_als(events, n_items, split.validation_start, opts.als)
    test_train_only, _ = recalls(split.test_start, split.data_end, train_only, annoy_choice)
    choice = test["annoy_choice"]

    serving = retrieval.fit_als(events, n_items, split.data_end, opts.als)
    index = retrieval.build_annoy(serving.items, choice["n_trees"], opts.als.seed)
    retrieval.write_embeddings(serving, index, data.items["item_id"].tolist(), out)
    index.unload()
    metadata = {
        "dim": opts.als.factors,
        "metric": retrieval.METRIC,
        "n_trees": choice["n_trees"],
        "search_k": choice["search_k"],
        "annoy_choice": choice,
        "items": n_items,
        "users": len(serving.user_ids),
        "item_id_map": "item_ids.txt line i = Annoy item i = row i of item_embeddings.npy "
        "= position i of build/data/items.parquet",
        "user_id_map": "user_ids.txt line i = row i of user_embeddings.npy",
        "als": asdict(opts.als),
        "interaction_weight": "sum of log1p(quantity) * 0.5 ** (age_days / half_life_days)",
        "serving_trained_on": {"start": str(split.data_start), "end": str(split.data_end)},
        "recall_definition": "users buying in the test period who bought before it; relevant = "
        "items bought in the test period not bought before; K items returned with the user's "
        "past items excluded; recall = |relevant ∩ returned| / |relevant|, mean over users",
        "recall_test": {k: v for k, v in test.items() if k != "annoy_choice"},
        "recall_test_model_trained_before_validation_start": {
            k: v for k, v in test_train_only.items() if k != "annoy_choice"
        },
        "sample": opts.sample,
        "seconds": time.perf_counter() - started,
    }
    _json(out / "metadata.json", metadata)
    return metadata


def _windows(
    opts: PipelineOptions, validation_start: pd.Timestamp
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    first = validation_start - WINDOW * (opts.training_windows - 1)
    return [(first + WINDOW * i, first + WINDOW * (i + 1)) for i in range(opts.training_windows)]


def run_datasets(tables: Path, data_dir: Path, out: Path, opts: PipelineOptions) -> dict[str, Any]:
    """Training windows (ending at test_start) and the test window, with serving features."""
    data = load_data(tables, data_dir, opts.sample)
    split, n_items = data.split, len(data.items)
    parts = []
    windows = _windows(opts, split.validation_start)
    for start, end in windows:
        embeddings = retrieval.fit_als(data.events, n_items, start, opts.als)
        parts.append(
            build_ranking_set(
                data, start, end, embeddings, item_snapshot(data, start), opts.candidates
            )
        )
    train = RankingSet.concat(parts)
    test_embeddings = retrieval.fit_als(data.events, n_items, split.test_start, opts.als)
    snapshot = item_snapshot(data, split.test_start)
    test = build_ranking_set(
        data, split.test_start, split.data_end, test_embeddings, snapshot, opts.candidates
    )
    out.mkdir(parents=True, exist_ok=True)
    train.save(out / "train.npz")
    test.save(out / "test.npz")
    np.save(out / "test_popularity.npy", snapshot.popularity)
    np.save(out / "test_item_embeddings.npy", test_embeddings.items)
    summary = {
        "training_windows": [[str(a), str(b)] for a, b in windows],
        "test_window": [str(split.test_start), str(split.data_end)],
        "train": {
            "queries": len(train),
            "rows": len(train.labels),
            "positives": float(train.labels.sum()),
        },
        "test": {
            "queries": len(test),
            "rows": len(test.labels),
            "positives": float(test.labels.sum()),
        },
        "feature_names": list(FEATURE_NAMES),
        "context_note": "device and page are UNSPECIFIED (0) in all training rows: "
        "the data has neither",
    }
    _json(out / "datasets.json", summary)
    return summary


def _split(datasets: Path, opts: PipelineOptions) -> tuple[RankingSet, RankingSet]:
    return split_users(RankingSet.load(datasets / "train.npz"), opts.valid_share, opts.train.seed)


def run_rankers(datasets: Path, out: Path, opts: PipelineOptions) -> dict[str, Any]:
    """Trains every model in :data:`MODELS`; saves weights and the training log."""
    import torch

    train, valid = _split(datasets, opts)
    summary = {}
    for name, kind in MODELS.items():
        started = time.perf_counter()
        result = train_ranker(kind, _objective(name, train), _objective(name, valid), opts.train)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(result.model.state_dict(), folder / "model.pt")
        summary[name] = {
            "kind": kind,
            "objective": "discovery" if name in DISCOVERY_MODELS else "purchase",
            "best_epoch": result.best_epoch,
            "history": result.history,
            "seconds": time.perf_counter() - started,
            "config": asdict(opts.train),
        }
        _json(folder / "training.json", summary[name])
    return summary


def load_ranker(rankers: Path, name: str, opts: PipelineOptions) -> Any:
    """A trained ranker from ``rankers/<name>/model.pt``."""
    import torch

    kind = MODELS[name]
    zeros = np.zeros(NUM_FEATURES, np.float32)
    model = make_ranker(kind, zeros, np.ones(NUM_FEATURES, np.float32), opts.train)
    model.load_state_dict(torch.load(rankers / name / "model.pt", weights_only=True))
    model.eval()
    return model


def _ndcg(data: RankingSet, scores: npt.NDArray[np.float32]) -> float:
    return ranking_metrics(rank_by_score(data.positions, scores, data.offsets), data.relevant)[
        "ndcg@10"
    ]


def run_export(datasets: Path, rankers: Path, out: Path, opts: PipelineOptions) -> dict[str, Any]:
    """FP32 ONNX (checked against PyTorch), both INT8 variants, the better one kept."""
    _, all_valid = _split(datasets, opts)
    summary = {}
    for name in MODELS:
        valid = _objective(name, all_valid)
        model = load_ranker(rankers, name, opts)
        folder = out / name
        fp32 = export.export_onnx(model, NUM_FEATURES, folder / "fp32.onnx")
        torch_scores = predict(model, valid.features)
        fp32_scores = export.onnx_scores(export.session(fp32), valid.features)
        diff = export.max_abs_diff(torch_scores, fp32_scores)
        if diff >= export.MAX_ABS_DIFF:
            raise RuntimeError(f"{name}: ONNX differs from PyTorch by {diff:.2e}")
        variants = {
            "dynamic": export.quantize_dynamic_int8(fp32, folder / "int8_dynamic.onnx"),
            "static": export.quantize_static_int8(
                fp32, folder / "int8_static.onnx", valid.features
            ),
        }
        ndcg = {"fp32": _ndcg(valid, fp32_scores)}
        for method, path in variants.items():
            ndcg[method] = _ndcg(valid, export.onnx_scores(export.session(path), valid.features))
        # Prefer dynamic on a tie: no calibration data to keep in sync.
        kept = max(("dynamic", "static"), key=lambda m: (ndcg[m], m == "dynamic"))
        shutil.copyfile(variants[kept], folder / "int8.onnx")
        summary[name] = {
            "max_abs_diff_torch_vs_onnx_fp32": diff,
            "valid_ndcg@10": ndcg,
            "int8_method": kept,
            "int8_within_1pct_on_valid": export.quantization_ok(ndcg["fp32"], ndcg[kept]),
            "valid_queries": len(valid),
        }
        _json(folder / "export.json", summary[name])
    return summary


def run_evaluation(
    tables: Path,
    data_dir: Path,
    datasets: Path,
    onnx_dir: Path,
    retrieval_dir: Path,
    out: Path,
    opts: PipelineOptions,
) -> dict[str, Any]:
    """The test-period report (baselines, every model in FP32 and INT8, the surfaces)."""
    test = RankingSet.load(datasets / "test.npz")
    popularity = np.load(datasets / "test_popularity.npy")
    item_vectors = np.load(datasets / "test_item_embeddings.npy")
    data = load_data(tables, data_dir, opts.sample)
    before = data.events.loc[data.events["timestamp"] < data.split.test_start]
    purchases = purchase_matrix(
        before["user_id"].to_numpy(), before["position"].to_numpy(np.int32), len(popularity)
    )
    scores: dict[str, dict[str, npt.NDArray[np.float32]]] = {"ranker": {}, "discovery": {}}
    exports = {}
    for name in MODELS:
        exports[name] = _read_json(onnx_dir / name / "export.json")
        group = scores["discovery" if name in DISCOVERY_MODELS else "ranker"]
        for precision in ("fp32", "int8"):
            sess = export.session(onnx_dir / name / f"{precision}.onnx")
            group[f"{name}_{precision}"] = export.onnx_scores(sess, test.features)
    # MIXED's discovery weight is chosen on the validation queries, with the served heads; the
    # gateway serves that choice (gateway.resources.served_discovery_weight).
    _, valid = _split(datasets, opts)
    ranker, discovery = (
        export.onnx_scores(export.session(onnx_dir / name / "int8.onnx"), valid.features)
        for name in (TODAY.removesuffix("_int8"), DISCOVERY.removesuffix("_int8"))
    )
    weight_choice = choose_discovery_weight(valid, ranker, discovery)
    served_weight = weight_choice["weight"]
    result = evaluate(
        test,
        popularity,
        item_vectors,
        scores["ranker"],
        scores["discovery"],
        purchases,
        DISCOVERY_WEIGHT if served_weight is None else served_weight,
    )
    metrics = result["metrics"]
    segments = result["segments"]
    per_query = result["per_query_ndcg"]
    quantization = {}
    for name in MODELS:
        # A discovery model is judged on its own objective: NDCG@10 on products new to the user.
        by_name = (
            {k: v["discovery"] for k, v in segments.items()}
            if name in DISCOVERY_MODELS
            else metrics
        )
        fp32, int8 = by_name[f"{name}_fp32"]["ndcg@10"], by_name[f"{name}_int8"]["ndcg@10"]
        quantization[name] = {
            "method": exports[name]["int8_method"],
            "fp32_ndcg@10": fp32,
            "int8_ndcg@10": int8,
            "relative_drop": (fp32 - int8) / fp32 if fp32 else 0.0,
            "within_1pct": export.quantization_ok(fp32, int8),
            "valid_ndcg@10": exports[name]["valid_ndcg@10"],
            "max_abs_diff_torch_vs_onnx_fp32": exports[name]["max_abs_diff_torch_vs_onnx_fp32"],
        }
    datasets_info = _read_json(datasets / "datasets.json")
    retrieval_meta = _read_json(retrieval_dir / "metadata.json")
    report = {
        "test_period": {
            "start": datasets_info["test_window"][0],
            "end": datasets_info["test_window"][1],
        },
        "metrics": metrics,
        "segments": segments,
        "candidate_recall": result["candidate_recall"],
        "new_item_candidate_recall": result["new_item_candidate_recall"],
        "targets": targets(
            metrics, [f"{n}_fp32" for n in RANKERS] + [f"{n}_int8" for n in RANKERS]
        ),
        "discovery_targets": discovery_targets(segments),
        "discovery_weight": weight_choice,
        "v2_minus_v3": paired_bootstrap(per_query["ranker_v2_fp32"], per_query["ranker_v3_fp32"]),
        "discover_minus_masked_ranker": result["discover_minus_masked_ranker"],
        "mixed_minus_fixed_slots": result["mixed_minus_fixed_slots"],
        "quantization": quantization,
        "retrieval": {
            "recall@100 (annoy / exact / popularity)": retrieval_meta["recall_test"]["recall@100"],
            "recall@500 (annoy / exact / popularity)": retrieval_meta["recall_test"]["recall@500"],
            "annoy": {k: retrieval_meta[k] for k in ("metric", "n_trees", "search_k")},
        },
        "plots": "skipped: matplotlib is not installed",
    }
    write_report(report, out)
    return report


def run_triton(
    onnx_dir: Path, reports: Path, datasets: Path, out: Path, opts: PipelineOptions
) -> dict[str, Any]:
    """Both repository flavours, with per-version metadata."""
    evaluation = _read_json(reports / "evaluation.json")
    datasets_info = _read_json(datasets / "datasets.json")
    sha = git_sha()
    written: dict[str, Any] = {}
    for flavour in repository.Flavour:
        root = out / flavour.value
        if root.exists():
            shutil.rmtree(root)
        (discovery,) = DISCOVERY_MODELS
        production = flavour is repository.Flavour.PRODUCTION
        # Each ranker's graph carries the discovery model as its second head (one execution
        # answers both); the discovery model's own folder is written too.
        head = DiscoveryHead(
            discovery,
            onnx_dir / discovery / "int8.onnx",
            onnx_dir / discovery / "fp32.onnx" if production else None,
        )
        for name in [*DISCOVERY_MODELS, *RANKERS]:
            metadata = {
                "model": name,
                "architecture": MODELS[name],
                "objective": "discovery" if name in DISCOVERY_MODELS else "purchase",
                "feature_names": list(FEATURE_NAMES),
                "inputs": {export.INPUT_NAME: ["FP32", [-1, NUM_FEATURES]]},
                "outputs": {export.OUTPUT_NAME: ["FP32", [-1, 1]]},
                "training_windows": datasets_info["training_windows"],
                "test_window": datasets_info["test_window"],
                "offline_metrics": {
                    "fp32": evaluation["metrics"][f"{name}_fp32"],
                    "int8": evaluation["metrics"][f"{name}_int8"],
                },
                "offline_segments": evaluation["segments"][f"{name}_int8"],
                "quantization": evaluation["quantization"][name],
                "git_sha": sha,
                "sample": opts.sample,
            }
            # GPUs serve the fp32 graph (TensorRT FP16): the INT8 graphs suit the CPU.
            gpu_onnx_model = onnx_dir / name / "fp32.onnx" if production else None
            args = (root, name, onnx_dir / name / "int8.onnx", NUM_FEATURES, metadata)
            if name in DISCOVERY_MODELS:
                write_discovery(*args, opts.serving, flavour, gpu_onnx_model=gpu_onnx_model)
            else:
                metadata["discovery_model"] = discovery
                metadata["outputs"] = {
                    export.OUTPUT_NAME: ["FP32", [-1, 1]],
                    DISCOVERY_OUTPUT: ["FP32", [-1, 1]],
                }
                write_ranker(
                    *args,
                    opts.serving,
                    flavour,
                    gpu_onnx_model=gpu_onnx_model,
                    discovery=head,
                )
        written[flavour.value] = sorted(p.name for p in root.iterdir())
    return written
