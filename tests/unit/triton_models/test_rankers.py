"""Rankers on synthetic data: training learns, ONNX matches PyTorch, INT8 stays accurate."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

from triton_models import export
from triton_models.dataset import RankingSet
from triton_models.rankers import (
    RankerKind,
    TrainConfig,
    ndcg_of,
    predict,
    split_users,
    train_ranker,
)

F = 12


def _synthetic(queries: int = 120, per_query: int = 30, seed: int = 0) -> RankingSet:
    rng = np.random.default_rng(seed)
    n = queries * per_query
    features = rng.normal(size=(n, F)).astype(np.float32) * 3 + 5
    logit = 1.5 * (features[:, 0] - 5) / 3 - (features[:, 1] - 5) / 3 * (features[:, 2] - 5) / 3
    labels = (rng.random(n) < 1 / (1 + np.exp(-(logit - 2)))).astype(np.float32)
    positions = np.tile(np.arange(per_query, dtype=np.int32), queries)
    offsets = np.arange(0, n + 1, per_query, dtype=np.int64)
    relevant = [positions[a:b][labels[a:b] > 0] for a, b in itertools.pairwise(offsets)]
    return RankingSet(
        user_ids=[str(q) for q in range(queries)],
        offsets=offsets,
        positions=positions,
        features=features,
        labels=labels,
        relevant=relevant,
        history=[np.empty(0, np.int32)] * queries,
        user_vectors=np.zeros((queries, 2), np.float32),
    )


@pytest.fixture(scope="module")
def trained() -> dict[RankerKind, torch.nn.Module]:
    data = _synthetic()
    train, valid = split_users(data, 0.2)
    cfg = TrainConfig(hidden=(16, 8), max_epochs=4, batch_size=256, threads=1, progress=False)
    kinds: tuple[RankerKind, ...] = ("mlp", "dcn")
    return {kind: train_ranker(kind, train, valid, cfg).model for kind in kinds}


@pytest.mark.parametrize("kind", ["mlp", "dcn"])
def test_training_beats_random_order(
    trained: dict[RankerKind, torch.nn.Module], kind: RankerKind
) -> None:
    test = _synthetic(seed=1)
    learned = ndcg_of(predict(trained[kind], test.features), test)
    random = ndcg_of(np.random.default_rng(0).random(len(test.labels)).astype(np.float32), test)
    assert learned > random + 0.05


def test_split_is_deterministic_and_disjoint() -> None:
    data = _synthetic(queries=10)
    a_train, a_valid = split_users(data, 0.3, seed=4)
    b_train, b_valid = split_users(data, 0.3, seed=4)
    assert a_valid.user_ids == b_valid.user_ids and len(a_valid) == 3
    assert not set(a_train.user_ids) & set(a_valid.user_ids)
    assert a_train.features.shape[0] == int(a_train.offsets[-1])


@pytest.mark.parametrize("kind", ["mlp", "dcn"])
def test_onnx_matches_torch_and_int8_is_close(
    trained: dict[RankerKind, torch.nn.Module], kind: RankerKind, tmp_path: Path
) -> None:
    model = trained[kind]
    fp32 = export.export_onnx(model, F, tmp_path / "fp32.onnx")
    proto = onnx.load(str(fp32))
    assert [i.name for i in proto.graph.input] == ["features"]
    assert [o.name for o in proto.graph.output] == ["score"]
    data = _synthetic(seed=2)
    session = export.session(fp32)
    for batch in (1, 7, len(data.features)):
        onnx_scores = export.onnx_scores(session, data.features[:batch])
        assert (
            export.max_abs_diff(predict(model, data.features[:batch]), onnx_scores)
            < export.MAX_ABS_DIFF
        )
    fp32_ndcg = ndcg_of(export.onnx_scores(session, data.features), data)
    dynamic = export.quantize_dynamic_int8(fp32, tmp_path / "dynamic.onnx")
    static = export.quantize_static_int8(fp32, tmp_path / "static.onnx", data.features[:2000])
    for path in (dynamic, static):
        scores = export.onnx_scores(export.session(path), data.features)
        assert scores.shape == (len(data.features),)
        # Per-row errors of a few hundredths are expected; the ranking is what must hold.
        assert np.abs(scores - export.onnx_scores(session, data.features)).mean() < 0.02
    best = max(
        ndcg_of(export.onnx_scores(export.session(p), data.features), data)
        for p in (dynamic, static)
    )
    assert export.quantization_ok(fp32_ndcg, best)


def test_quantization_check() -> None:
    assert export.quantization_ok(0.300, 0.2971)
    assert not export.quantization_ok(0.300, 0.2969)
    assert export.quantization_ok(0.300, 0.31)
    assert export.quantization_ok(0.0, 0.0)


def test_head_layer_is_found_and_kept_in_fp32(
    trained: dict[RankerKind, torch.nn.Module], tmp_path: Path
) -> None:
    fp32 = export.export_onnx(trained["dcn"], F, tmp_path / "fp32.onnx")
    names = export.head_nodes(fp32)
    assert len(names) == 3
    dynamic = onnx.load(str(export.quantize_dynamic_int8(fp32, tmp_path / "dynamic.onnx")))
    # The head's MatMul survives as a float MatMul; every other layer became MatMulInteger.
    ops = [node.op_type for node in dynamic.graph.node]
    assert ops.count("MatMulInteger") == 5 and "MatMul" in ops


def test_static_int8_scores_are_not_cut_to_quantization_levels(
    trained: dict[RankerKind, torch.nn.Module], tmp_path: Path
) -> None:
    """The logit and the sigmoid stay FP32, so scores keep their resolution (quantized, the
    output took at most 256 values and a customer's top items tied)."""
    data = _synthetic(seed=2)
    fp32 = export.export_onnx(trained["mlp"], F, tmp_path / "fp32.onnx")
    static = export.quantize_static_int8(fp32, tmp_path / "static.onnx", data.features[:2000])
    graph = onnx.load(str(static)).graph
    producers = {output: node for node in graph.node for output in node.output}
    assert producers[graph.output[0].name].op_type == "Sigmoid"
    scores = export.onnx_scores(export.session(static), data.features)
    assert len(np.unique(scores)) > 256


@pytest.mark.parametrize("kind", ["mlp", "dcn"])
def test_subnormal_weights_are_exported_as_zero_and_change_no_score(
    trained: dict[RankerKind, torch.nn.Module], kind: RankerKind, tmp_path: Path
) -> None:
    """Weight decay leaves some weights subnormal, which slows FP32 inference on CPUs many
    times over; export writes them as zero, and the scores are bit for bit the same."""
    model = copy.deepcopy(trained[kind])
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        planted = 0
        for parameter in model.parameters():
            flat = parameter.view(-1)
            flat[::3] = tiny / 4 * torch.sign(flat[::3] + 0.5)  # subnormal, either sign
            planted += len(flat[::3])
    data = _synthetic(seed=3)
    before = predict(model, data.features)
    path = export.export_onnx(model, F, tmp_path / "fp32.onnx")
    assert export.flush_subnormal_weights(model) == 0  # the export flushed all of them
    np.testing.assert_array_equal(predict(model, data.features), before)
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    floats = np.concatenate([w.ravel() for w in weights if w.dtype == np.float32])
    assert planted > 0 and not np.any((floats != 0) & (np.abs(floats) < tiny))
    onnx_scores = export.onnx_scores(export.session(path), data.features)
    assert export.max_abs_diff(before, onnx_scores) < export.MAX_ABS_DIFF
