"""Triton's GPU and the model configs agree: `triton.device` chooses both.

The chart's rendered Triton Deployment (resources, tolerations, `--model-config-name`) is
checked against the production repository the pipeline's own `write_ranker` writes: every ONNX
model Triton would load there runs `KIND_GPU` instances with the TensorRT/CUDA execution
providers exactly when the pod is given GPUs, and `KIND_CPU` instances otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2

from feature_service.definitions import NUM_FEATURES
from tests.infra.tooling import CHART, Manifest, helm_template, one, render
from triton_models import repository as repo
from triton_models.ranker_repositories import (
    DiscoveryHead,
    ServingOptions,
    write_discovery,
    write_ranker,
)

PRODUCTION = CHART / "ci" / "production-values.yaml"
CPU = CHART / "ci" / "cpu-values.yaml"
KIND_GPU = model_config_pb2.ModelInstanceGroup.KIND_GPU
KIND_CPU = model_config_pb2.ModelInstanceGroup.KIND_CPU


def _ranker_graph(path: Path, seed: int) -> Path:
    """An ONNX graph with the rankers' tensors: features [N, F] -> sigmoid(features @ w)."""
    weights = np.random.default_rng(seed).normal(size=(NUM_FEATURES, 1)).astype(np.float32)
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


@pytest.fixture(scope="module")
def production_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ranker_v2 with its discovery head, and the discovery model's own folder, as `make models`
    writes them into build/triton/production (same code path)."""
    work = tmp_path_factory.mktemp("triton-production")
    root = work / "production"
    discovery = DiscoveryHead(
        "discovery_v1",
        _ranker_graph(work / "discovery_int8.onnx", 3),
        _ranker_graph(work / "discovery_fp32.onnx", 4),
    )
    write_discovery(
        root,
        discovery.name,
        discovery.onnx_model,
        NUM_FEATURES,
        {"model": discovery.name},
        ServingOptions(),
        repo.Flavour.PRODUCTION,
        gpu_onnx_model=discovery.gpu_onnx_model,
    )
    write_ranker(
        root,
        "ranker_v2",
        _ranker_graph(work / "int8.onnx", 1),
        NUM_FEATURES,
        {"model": "ranker_v2"},
        ServingOptions(),
        repo.Flavour.PRODUCTION,
        gpu_onnx_model=_ranker_graph(work / "fp32.onnx", 2),
        discovery=discovery,
    )
    return root


def _triton(manifests: list[Manifest]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Triton pod spec and its container."""
    pod = one(manifests, "Deployment", "recsys-triton")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def _config_name(args: list[str]) -> str | None:
    names = [a.split("=", 1)[1] for a in args if a.startswith("--model-config-name=")]
    assert len(names) <= 1
    return names[0] if names else None


def _gpus(container: dict[str, Any]) -> int:
    resources = container.get("resources", {})
    counts = [
        int(resources.get(part, {}).get("nvidia.com/gpu", 0)) for part in ("limits", "requests")
    ]
    return max(counts)


@pytest.mark.parametrize(
    ("values", "sets", "expected_gpus"),
    [
        ((PRODUCTION,), [], 1),
        ((), [], 1),
        ((), ["triton.gpus=2"], 2),
        ((), ["triton.device=cpu"], 0),
        ((PRODUCTION,), ["triton.device=cpu"], 0),
        ((CPU,), [], 0),
    ],
    ids=["production", "default", "two-gpus", "cpu", "production-on-cpu", "ci-cpu-values"],
)
def test_chart_resources_and_model_configs_agree(
    production_repository: Path, values: tuple[Path, ...], sets: list[str], expected_gpus: int
) -> None:
    pod, container = _triton(render(*values, sets=sets))
    gpus = _gpus(container)
    assert gpus == expected_gpus
    config_name = _config_name(container["args"])
    tolerates_gpu = any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
    assert tolerates_gpu == (gpus > 0)

    onnx_models = 0
    for model_dir in sorted(p for p in production_repository.iterdir() if p.is_dir()):
        config = repo.served_config(model_dir, config_name)
        if config.platform == "ensemble":
            assert not config.instance_group  # scheduled, not placed on a device
            continue
        onnx_models += 1
        assert config.backend == "onnxruntime"
        kinds = {group.kind for group in config.instance_group}
        accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
        graph_file = config.default_model_filename or repo.ONNX_FILENAME
        if gpus:
            assert kinds == {KIND_GPU}, f"{model_dir.name}: pod has {gpus} GPUs"
            for group in config.instance_group:
                assert all(0 <= gpu < gpus for gpu in group.gpus)  # empty: every GPU given
            assert [a.name for a in accelerators] == ["tensorrt", "cuda"]
            tensorrt = dict(accelerators[0].parameters)
            assert tensorrt["precision_mode"] == "FP16"
            # The engine cache lives on the pod's writable /tmp (the repository is read-only).
            assert tensorrt["trt_engine_cache_path"].startswith("/tmp/")
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
            assert tensorrt["trt_profile_max_shapes"] == (
                f"features:{config.max_batch_size}x{NUM_FEATURES}"
            )
            assert graph_file == repo.GPU_ONNX_FILENAME
        else:
            assert kinds == {KIND_CPU}, f"{model_dir.name}: pod has no GPU"
            assert not config.HasField("optimization")
            assert graph_file == repo.ONNX_FILENAME
        # The graph Triton would open exists in every version folder and has the config's tensors.
        versions = [p for p in model_dir.iterdir() if p.name.isdigit()]
        assert versions
        for version in versions:
            inputs, outputs = repo.tensor_specs_from_onnx(version / graph_file)
            assert [(t.name, list(t.dims)) for t in inputs] == [
                (i.name, list(i.dims)) for i in config.input
            ]
            assert [t.name for t in outputs] == [o.name for o in config.output]
    assert onnx_models == 2  # ranker_v2_onnx (two heads) and discovery_v1_onnx


def test_gpus_in_resources_by_hand_are_refused() -> None:
    # A GPU requested outside triton.device would sit idle beside KIND_CPU models.
    result = helm_template(
        sets=["triton.device=cpu", "triton.resources.limits.nvidia\\.com/gpu=1"], expect_ok=False
    )
    assert result.returncode != 0
    assert "triton.resources must not name nvidia.com/gpu" in result.stderr


def test_device_values_are_checked_by_the_schema() -> None:
    result = helm_template(sets=["triton.device=tpu"], expect_ok=False)
    assert result.returncode != 0
    assert "triton.device" in result.stderr
    result = helm_template(sets=["triton.gpus=0"], expect_ok=False)
    assert result.returncode != 0
    assert "triton.gpus" in result.stderr


def test_local_flavour_has_no_gpu_configuration(tmp_path: Path) -> None:
    # The wheel's tritonserver runs ONNX through the Python backend on the CPU only.
    write_ranker(
        tmp_path,
        "ranker_v2",
        _ranker_graph(tmp_path / "int8.onnx", 1),
        NUM_FEATURES,
        {"model": "ranker_v2"},
        ServingOptions(),
        repo.Flavour.LOCAL,
    )
    assert not (tmp_path / "ranker_v2_onnx" / repo.CUSTOM_CONFIGS_DIR).exists()
    spec = repo.OnnxModelSpec(
        name="m",
        inputs=(repo.TensorSpec("features", np.float32, (NUM_FEATURES,)),),
        outputs=(repo.TensorSpec("score", np.float32, (1,)),),
    )
    with pytest.raises(ValueError, match="production flavour only"):
        repo.onnx_model_config(spec, repo.Flavour.LOCAL, repo.Device.GPU)
