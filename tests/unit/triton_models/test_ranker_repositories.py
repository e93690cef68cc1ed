"""The rankers' Triton repository: one quantized model (two heads with a discovery model) plus a
one-step ensemble, both flavours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2

from triton_models import repository as repo
from triton_models.ranker_repositories import (
    DISCOVERY_OUTPUT,
    DiscoveryHead,
    ServingOptions,
    git_sha,
    write_discovery,
    write_ranker,
)

F = 5


def _onnx(path: Path, weight: float = 1.0) -> Path:
    weights = numpy_helper.from_array(np.full((F, 1), weight, np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["score"]),
        ],
        "ranker",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", F])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        [weights],
    )
    onnx.save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path)
    )
    return path


def test_write_ranker_both_flavours(tmp_path: Path) -> None:
    model = _onnx(tmp_path / "model.onnx")
    options = ServingOptions(
        preferred_batch_sizes=(100, 400), max_queue_delay_us=500, instance_count=3
    )
    for flavour in repo.Flavour:
        root = tmp_path / flavour.value
        model_dir, ensemble_dir = write_ranker(
            root, "ranker_v2", model, F, {"feature_names": ["a"]}, options, flavour
        )

        config = repo.read_config(model_dir)
        assert config.name == "ranker_v2_onnx"
        assert [(t.name, list(t.dims)) for t in config.input] == [("features", [F])]
        assert [(t.name, list(t.dims)) for t in config.output] == [("score", [1])]
        assert list(config.dynamic_batching.preferred_batch_size) == [100, 400]
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        # No queue policy: with one, the 2.51 batcher held some requests ~520 ms.
        assert not config.dynamic_batching.HasField("default_queue_policy")
        assert config.instance_group[0].count == 3
        # Every instance scores 500 zero rows before the model is READY (no cold first call).
        (warmup,) = config.model_warmup
        assert warmup.batch_size == 500
        assert list(warmup.inputs["features"].dims) == [F]
        assert warmup.inputs["features"].zero_data
        assert config.backend == ("python" if flavour is repo.Flavour.LOCAL else "onnxruntime")

        ensemble = repo.read_config(ensemble_dir)
        assert ensemble.platform == "ensemble"
        (step,) = ensemble.ensemble_scheduling.step
        assert step.model_name == "ranker_v2_onnx"
        assert dict(step.input_map) == {"features": "features"}
        assert dict(step.output_map) == {"score": "score"}
        assert ensemble.input[0].data_type == model_config_pb2.TYPE_FP32
        assert repo.read_version_metadata(model_dir, 1) == {"feature_names": ["a"]}
        assert repo.read_version_metadata(ensemble_dir, 1) == {"feature_names": ["a"]}


def test_warmup_of_unbatched_and_variable_inputs() -> None:
    features = repo.TensorSpec("features", np.float32, (-1, F))
    score = repo.TensorSpec("score", np.float32, (-1, 1))
    unbatched = repo.OnnxModelSpec("m", (features,), (score,), warmup_rows=64)
    (warmup,) = repo.onnx_model_config(unbatched, repo.Flavour.LOCAL).model_warmup
    assert warmup.batch_size == 1
    assert list(warmup.inputs["features"].dims) == [64, F]  # the variable row axis
    batched = repo.OnnxModelSpec(
        "m", (repo.TensorSpec("features", np.float32, (F, -1)),), (score,), 32, warmup_rows=64
    )
    (warmup,) = repo.onnx_model_config(batched, repo.Flavour.PRODUCTION).model_warmup
    assert warmup.batch_size == 32  # capped at max_batch_size
    assert list(warmup.inputs["features"].dims) == [F, 1]
    assert not repo.onnx_model_config(
        repo.OnnxModelSpec("m", (features,), (score,)), repo.Flavour.LOCAL
    ).model_warmup
    with pytest.raises(ValueError, match="warmup_rows"):
        repo.OnnxModelSpec("m", (features,), (score,), warmup_rows=-1)


def test_git_sha_is_a_hash_or_none() -> None:
    sha = git_sha()
    assert sha is None or (len(sha) == 40 and int(sha, 16) >= 0)


def test_default_serving_options_merge_whatever_has_queued(tmp_path: Path) -> None:
    # Requests carry 500-600 rows, so no preferred size; a 2 ms window to merge them
    # (benchmarks/triton_serving_bench.py chose it).
    model_dir, _ = write_ranker(
        tmp_path,
        "ranker_v2",
        _onnx(tmp_path / "model.onnx"),
        F,
        {},
        ServingOptions(),
        repo.Flavour.LOCAL,
    )

    config = repo.read_config(model_dir)
    assert config.HasField("dynamic_batching")
    assert not config.dynamic_batching.preferred_batch_size
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.instance_group[0].count == 2


def test_dynamic_batching_with_every_field_at_its_default_is_still_on() -> None:
    features = repo.TensorSpec("features", np.float32, (F,))
    score = repo.TensorSpec("score", np.float32, (1,))
    spec = repo.OnnxModelSpec("m", (features,), (score,), 64, repo.DynamicBatching())

    config = repo.parse_config(repo.config_text(repo.onnx_model_config(spec, repo.Flavour.LOCAL)))

    assert config.HasField("dynamic_batching")
    assert "dynamic_batching {" in repo.config_text(config)


def _scores(
    model: Path | bytes, outputs: list[str], rows: npt.NDArray[np.float32]
) -> list[npt.NDArray[np.float32]]:
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(outputs, {"features": rows})]


def test_ranker_graph_carries_the_discovery_head_in_one_step(tmp_path: Path) -> None:
    ranker, discovery_graph = _onnx(tmp_path / "r.onnx", 1.0), _onnx(tmp_path / "d.onnx", -0.5)
    options = ServingOptions()
    root = tmp_path / "local"
    discovery_dir = write_discovery(
        root,
        "discovery_v1",
        discovery_graph,
        F,
        {"objective": "discovery"},
        options,
        repo.Flavour.LOCAL,
    )
    assert discovery_dir.name == "discovery_v1_onnx"
    assert not (root / "discovery_v1").exists()  # its own folder, no ensemble of its own
    assert repo.read_config(discovery_dir).dynamic_batching.max_queue_delay_microseconds == 2000
    head = DiscoveryHead("discovery_v1", discovery_graph)
    model_dir, ensemble_dir = write_ranker(
        root, "ranker_v2", ranker, F, {}, options, repo.Flavour.LOCAL, discovery=head
    )
    ensemble = repo.read_config(ensemble_dir)
    assert [t.name for t in ensemble.output] == ["score", DISCOVERY_OUTPUT]
    (step,) = ensemble.ensemble_scheduling.step  # one model execution answers both
    assert step.model_name == "ranker_v2_onnx"
    assert dict(step.input_map) == {"features": "features"}
    assert dict(step.output_map) == {"score": "score", DISCOVERY_OUTPUT: DISCOVERY_OUTPUT}
    config = repo.read_config(model_dir)
    assert [(t.name, list(t.dims)) for t in config.output] == [
        ("score", [1]),
        (DISCOVERY_OUTPUT, [1]),
    ]
    # Each head scores exactly as its model alone.
    rows = np.random.default_rng(3).normal(size=(7, F)).astype(np.float32)
    score, discovery = _scores(model_dir / "1" / "model.onnx", ["score", DISCOVERY_OUTPUT], rows)
    np.testing.assert_array_equal(score, _scores(ranker, ["score"], rows)[0])
    np.testing.assert_array_equal(discovery, _scores(discovery_graph, ["score"], rows)[0])


def test_production_ranker_joins_both_gpu_graphs(tmp_path: Path) -> None:
    ranker, discovery_graph = _onnx(tmp_path / "r.onnx", 1.0), _onnx(tmp_path / "d.onnx", -0.5)
    gpu_ranker, gpu_discovery = _onnx(tmp_path / "rg.onnx", 2.0), _onnx(tmp_path / "dg.onnx", 3.0)
    model_dir, _ = write_ranker(
        tmp_path,
        "ranker_v2",
        ranker,
        F,
        {},
        ServingOptions(),
        repo.Flavour.PRODUCTION,
        gpu_onnx_model=gpu_ranker,
        discovery=DiscoveryHead("discovery_v1", discovery_graph, gpu_discovery),
    )
    rows = np.ones((2, F), np.float32)
    gpu = _scores(model_dir / "1" / repo.GPU_ONNX_FILENAME, ["score", DISCOVERY_OUTPUT], rows)
    np.testing.assert_array_equal(gpu[0], _scores(gpu_ranker, ["score"], rows)[0])
    np.testing.assert_array_equal(gpu[1], _scores(gpu_discovery, ["score"], rows)[0])
    with pytest.raises(ValueError, match="discovery_v1 has none"):
        write_ranker(
            tmp_path / "again",
            "ranker_v2",
            ranker,
            F,
            {},
            ServingOptions(),
            repo.Flavour.PRODUCTION,
            gpu_onnx_model=gpu_ranker,
            discovery=DiscoveryHead("discovery_v1", discovery_graph),
        )
