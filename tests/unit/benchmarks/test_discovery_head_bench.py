"""The three layouts the discovery-head benchmark compares, written from tiny graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks.discovery_head_bench import LAYOUTS, markdown, write_layouts
from feature_service.definitions import NUM_FEATURES
from triton_models import repository as repo


def _graph(path: Path, weight: float) -> None:
    weights = np.full((NUM_FEATURES, 1), weight, np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["score"]),
        ],
        "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", NUM_FEATURES])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 1])],
        [numpy_helper.from_array(weights, "w")],
    )
    path.parent.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_layouts_run_the_discovery_model_as_nothing_a_step_or_a_head(tmp_path: Path) -> None:
    onnx_dir = tmp_path / "onnx"
    _graph(onnx_dir / "ranker_v2" / "int8.onnx", 1.0)
    _graph(onnx_dir / "discovery_v1" / "int8.onnx", -1.0)
    root = tmp_path / "repository"
    write_layouts(root, onnx_dir, "ranker_v2", "discovery_v1")

    steps = {
        name: [
            (step.model_name, dict(step.output_map))
            for step in repo.read_config(root / name).ensemble_scheduling.step
        ]
        for name in LAYOUTS
    }
    assert steps == {
        "ranker_only": [("ranker_only_onnx", {"score": "score"})],
        "two_steps": [
            ("ranker_only_onnx", {"score": "score"}),
            ("discovery_v1_onnx", {"score": "discovery_score"}),
        ],
        "two_heads": [("two_heads_onnx", {"score": "score", "discovery_score": "discovery_score"})],
    }


def test_markdown_gives_each_layout_against_the_ranker_alone() -> None:
    figure = {"cpu_ms_per_request": 1.0, "req_per_s": 100.0, "median_ms": 2.0}
    doubled = {**figure, "cpu_ms_per_request": 2.0}
    report = {
        "time": "t",
        "settings": {
            "ranker": "r",
            "discovery": "d",
            "rows": 5,
            "rounds": 1,
            "requests_per_round": 3,
        },
        "machine": {"cpu_count": 2, "cpu_model": "x", "load_average_at_start": [1.0]},
        "rounds": {"1": {"ranker_only": [figure], "two_steps": [doubled], "two_heads": [figure]}},
    }
    text = markdown(report)
    assert "| 1 | two_steps | 2.000 | 2.00 | 100 | 2.00 |" in text
    assert "| 1 | ranker_only | 1.000 | 1.00 | 100 | 2.00 |" in text
