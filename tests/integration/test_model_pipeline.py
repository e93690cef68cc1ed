"""The whole offline pipeline on a deterministic sample of the real data, served by tritonserver.

`recsys-models --sample 300` runs once into a temporary build folder; the generated local
repository is then served by the real tritonserver, and the ensembles must answer exactly what
onnxruntime computes offline from the same quantized models.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from annoy import AnnoyIndex

from feature_service.definitions import FEATURE_NAMES, NUM_FEATURES
from infra.local.tritonserver import TritonServer
from tests.conftest import DATA_DIR
from triton_models import export
from triton_models.cli import run_pipeline
from triton_models.dataset import RankingSet
from triton_models.evaluate import WEIGHT_GRID
from triton_models.pipeline import PipelineOptions
from triton_models.rankers import TrainConfig

pytestmark = pytest.mark.integration

StartTriton = Callable[..., TritonServer]  # the start_tritonserver fixture
RANKERS = ("ranker_v2", "ranker_v3")
DISCOVERY = "discovery_v1"
SAMPLE = 300


def _options() -> PipelineOptions:
    opts = PipelineOptions(sample=SAMPLE)
    train = TrainConfig(max_epochs=3, progress=False)
    return dataclasses.replace(opts, train=train)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    out = tmp_path_factory.mktemp("models")
    timings = run_pipeline(DATA_DIR, out, _options())
    return out, timings


@pytest.fixture(scope="module")
def triton(
    start_tritonserver: StartTriton, build: tuple[Path, dict[str, float]]
) -> Iterator[TritonServer]:
    out, _ = build
    server = start_tritonserver(
        out / "triton" / "local", model_control_mode="explicit", load_models=("*",)
    )
    yield server
    server.stop()


@pytest.fixture
async def client(triton: TritonServer) -> AsyncIterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        yield client
    finally:
        await client.close()


def test_every_step_ran_and_a_rerun_skips_them(build: tuple[Path, dict[str, float]]) -> None:
    out, timings = build
    assert set(timings) == {
        "ingest",
        "retrieval",
        "datasets",
        "rankers",
        "export",
        "evaluation",
        "triton",
    }
    again = run_pipeline(DATA_DIR, out, _options())
    assert all(seconds == 0.0 for step, seconds in again.items() if step != "ingest"), again


def test_retrieval_artefacts(build: tuple[Path, dict[str, float]]) -> None:
    out, _ = build
    folder = out / "retrieval"
    meta = json.loads((folder / "metadata.json").read_text())
    item_ids = (folder / "item_ids.txt").read_text().split()
    users = np.load(folder / "user_embeddings.npy")
    assert len((folder / "user_ids.txt").read_text().split()) == len(users) <= SAMPLE
    index = AnnoyIndex(meta["dim"], meta["metric"])
    index.load(str(folder / "items.ann"))
    try:
        assert index.get_n_items() == len(item_ids) == meta["items"]
        found = index.get_nns_by_vector(users[0].tolist(), 50, search_k=meta["search_k"])
        assert len(found) == 50
    finally:
        index.unload()
    for k in ("recall@100", "recall@500"):
        assert set(meta["recall_test"][k]) == {"annoy", "exact", "popularity"}


def test_report_and_metadata(build: tuple[Path, dict[str, float]]) -> None:
    out, _ = build
    report = json.loads((out / "reports" / "evaluation.json").read_text())
    assert {"popularity", "retrieval_only", "ranker_v2_int8", "ranker_v3_fp32"} <= set(
        report["metrics"]
    )
    assert (out / "reports" / "evaluation.md").read_text().startswith("# Offline evaluation")
    # Every list is scored on re-orders and on new products apart; the surfaces are measured.
    segments = report["segments"]
    assert {"popularity_skip_own", "item_to_item", f"{DISCOVERY}_int8", "DISCOVER"} <= set(segments)
    assert segments["DISCOVER"]["own_item_share@10"] == 0.0
    assert segments["popularity_skip_own"]["own_item_share@10"] == 0.0
    assert segments["BUY_AGAIN"] == segments["ranker_v2_int8"]
    for slots in range(1, 6):
        mixed = segments[f"MIXED ({slots} discovery slots)"]
        assert mixed["own_item_share@10"] <= 1 - slots / 10 + 1e-9
    # The targets read the served MIXED (slots per customer at the served weight), and the
    # weight is chosen again on the validation queries at every build.
    targets, served = report["discovery_targets"], segments["MIXED"]
    assert targets["MIXED discovery HR@10 >= 0.35"] == (served["discovery"]["hr@10"] >= 0.35)
    within = served["overall"]["recall@10"] >= 0.95 * segments["BUY_AGAIN"]["overall"]["recall@10"]
    assert targets["MIXED overall recall@10 within 5% of today's (ranker_v2_int8)"] == within
    choice = report["discovery_weight"]
    assert len(choice["grid"]) == len(WEIGHT_GRID) and choice["validation_queries"] > 0
    assert set(report["mixed_minus_fixed_slots"]) == {"overall recall@10", "new products hr@10"}
    assert DISCOVERY in report["quantization"]
    discovery_meta = json.loads(
        (out / "triton" / "local" / f"{DISCOVERY}_onnx" / "1" / "metadata.json").read_text()
    )
    assert discovery_meta["objective"] == "discovery"
    for flavour in ("local", "production"):
        for name in RANKERS:
            meta = json.loads(
                (out / "triton" / flavour / f"{name}_onnx" / "1" / "metadata.json").read_text()
            )
            assert meta["feature_names"] == list(FEATURE_NAMES)
            assert (
                meta["offline_metrics"]["int8"]["ndcg@10"]
                == report["metrics"][f"{name}_int8"]["ndcg@10"]
            )
    for name in RANKERS:
        exported = json.loads((out / "onnx" / name / "export.json").read_text())
        assert exported["max_abs_diff_torch_vs_onnx_fp32"] < 1e-4


async def test_models_ready_and_ensemble_matches_onnxruntime(
    client: grpcclient.InferenceServerClient, build: tuple[Path, dict[str, float]]
) -> None:
    out, _ = build
    index = await client.get_model_repository_index(as_json=True)
    states = {model["name"]: model.get("state") for model in index["models"]}
    assert states == {
        **{name: "READY" for r in RANKERS for name in (r, f"{r}_onnx")},
        f"{DISCOVERY}_onnx": "READY",
    }

    test = RankingSet.load(out / "datasets" / "test.npz")
    features = np.ascontiguousarray(test.features[: test.offsets[3]])
    assert features.shape[1] == NUM_FEATURES
    for name in RANKERS:
        tensor = grpcclient.InferInput("features", list(features.shape), "FP32")
        tensor.set_data_from_numpy(features)
        # One call answers both heads: the ranker's and the discovery model's scores.
        result = await client.infer(
            name,
            [tensor],
            outputs=[
                grpcclient.InferRequestedOutput("score"),
                grpcclient.InferRequestedOutput("discovery_score"),
            ],
        )
        for output, model in (("score", name), ("discovery_score", DISCOVERY)):
            served = np.asarray(result.as_numpy(output))
            offline = export.session(out / "onnx" / model / "int8.onnx").run(
                ["score"], {"features": features}
            )[0]
            assert served.shape == (len(features), 1) and served.dtype == np.float32
            np.testing.assert_allclose(served, offline, rtol=0, atol=1e-5)
