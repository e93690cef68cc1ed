"""Joining a ranker's graph and the discovery model's into one two-output model."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from triton_models.two_heads import join_heads

F = 3


def _graph(weight: float, bias_name: str = "b", output: str = "score") -> onnx.ModelProto:
    """features [N, F] -> sigmoid(features @ w + b), names shared by both test graphs."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["logit"]),
            helper.make_node("Add", ["logit", bias_name], ["shifted"]),
            helper.make_node("Sigmoid", ["shifted"], [output]),
        ],
        "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", F])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", 1])],
        [
            numpy_helper.from_array(np.full((F, 1), weight, np.float32), "w"),
            numpy_helper.from_array(np.asarray([weight], np.float32), bias_name),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(
    model: onnx.ModelProto, outputs: list[str], rows: npt.NDArray[np.float32]
) -> list[npt.NDArray[np.float32]]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(outputs, {"features": rows})]


def test_both_heads_score_as_their_models_alone_though_names_collide() -> None:
    ranker, discovery = _graph(0.5), _graph(-2.0)
    joined = join_heads(ranker, discovery, "features", "score")

    assert [i.name for i in joined.graph.input] == ["features"]
    assert [o.name for o in joined.graph.output] == ["score", "discovery_score"]
    rows = np.random.default_rng(0).normal(size=(6, F)).astype(np.float32)
    score, discovery_score = _run(joined, ["score", "discovery_score"], rows)
    np.testing.assert_array_equal(score, _run(ranker, ["score"], rows)[0])
    np.testing.assert_array_equal(discovery_score, _run(discovery, ["score"], rows)[0])
    assert not np.array_equal(score, discovery_score)


def test_a_graph_with_other_tensors_is_refused() -> None:
    with pytest.raises(ValueError, match=r"discovery graph has inputs \['features'\] and outputs"):
        join_heads(_graph(1.0), _graph(1.0, output="prob"), "features", "score")
