"""`tritonserver --model-config-name` picks each model's `configs/<name>.pbtxt`, else
config.pbtxt: the mechanism by which `triton.device=gpu` runs configs/gpu.pbtxt.

No GPU here, so the real tritonserver (the wheel's) is started on a local repository whose
ONNX model has a second, CPU configuration under configs/ with a different instance count:
the named one is served, and the ensemble, which has none, falls back to its config.pbtxt
and still answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper, numpy_helper

from feature_service.definitions import NUM_FEATURES
from tests.integration.conftest import StartTriton
from triton_models import repository as repo
from triton_models.ranker_repositories import ServingOptions, write_ranker

pytestmark = pytest.mark.integration


def _graph(path: Path) -> Path:
    weights = np.full((NUM_FEATURES, 1), 0.01, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["score"]),
        ],
        "ranker",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, NUM_FEATURES])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(weights, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_named_configuration_is_served_and_others_fall_back(
    start_tritonserver: StartTriton, tmp_path: Path
) -> None:
    root = tmp_path / "repository"
    options = ServingOptions(instance_count=2, warmup_rows=0)
    model_dir, _ = write_ranker(
        root,
        "ranker_v2",
        _graph(tmp_path / "model.onnx"),
        NUM_FEATURES,
        {"model": "ranker_v2"},
        options,
        repo.Flavour.LOCAL,
    )
    default = repo.read_config(model_dir)
    named = repo.parse_config(repo.config_text(default))
    named.instance_group[0].count = 1
    path = repo.custom_config_path(model_dir, "alt")
    path.parent.mkdir()
    path.write_text(repo.config_text(named), encoding="utf-8")

    server = start_tritonserver(root, extra_args=("--model-config-name=alt",))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        served = client.get_model_config("ranker_v2_onnx").config
        assert [group.count for group in served.instance_group] == [1]
        assert repo.served_config(model_dir, "alt").instance_group[0].count == 1
        assert repo.served_config(model_dir, None).instance_group[0].count == 2
        # The ensemble has no configs/alt.pbtxt: Triton loads its config.pbtxt and it serves.
        assert client.is_model_ready("ranker_v2")
        features = grpcclient.InferInput("features", [3, NUM_FEATURES], "FP32")
        features.set_data_from_numpy(np.ones((3, NUM_FEATURES), dtype=np.float32))
        scores = client.infer("ranker_v2", [features]).as_numpy("score")
        assert scores is not None
        expected = 1.0 / (1.0 + np.exp(-0.01 * NUM_FEATURES))
        np.testing.assert_allclose(scores.ravel(), [expected] * 3, rtol=1e-5)
    finally:
        client.close()
        server.stop()
