"""The model registry's view of a ranker whose ensemble also runs a discovery model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feature_service.definitions import FEATURE_NAMES
from gateway.config import ConfigError
from gateway.model_registry import ModelRegistry, composing_models


def _model(root: Path, name: str, version: int, **metadata: object) -> None:
    folder = root / name / str(version)
    folder.mkdir(parents=True)
    body = {"feature_names": list(FEATURE_NAMES), **metadata}
    (folder / "metadata.json").write_text(json.dumps(body))


def _repository(root: Path, discovery_features: list[str] | None = None) -> Path:
    for name in ("ranker_v2", "ranker_v2_onnx"):
        _model(root, name, 1, discovery_model="discovery_v1")
    _model(root, "ranker_v3", 1)
    _model(root, "ranker_v3_onnx", 1)
    features = discovery_features if discovery_features is not None else list(FEATURE_NAMES)
    _model(root, "discovery_v1_onnx", 1)
    (root / "discovery_v1_onnx" / "1" / "metadata.json").write_text(
        json.dumps({"feature_names": features})
    )
    return root


def test_discovery_head_is_known_per_model(tmp_path: Path) -> None:
    root = _repository(tmp_path)
    assert composing_models(root, "ranker_v2", 1) == [
        "ranker_v2",
        "ranker_v2_onnx",
        "discovery_v1_onnx",
    ]
    registry = ModelRegistry(root, ["ranker_v2", "ranker_v3"])
    registry.validate_repository()
    assert registry.has_discovery("ranker_v2")
    assert not registry.has_discovery("ranker_v3")
    # Triton stops serving the ensemble: no route, and no discovery head either.
    registry.update({"ranker_v2_onnx": ["1"], "ranker_v3": ["1"], "ranker_v3_onnx": ["1"]})
    assert registry.version("ranker_v2") is None and not registry.has_discovery("ranker_v2")
    registry.update({"ranker_v2": ["1"], "ranker_v2_onnx": ["1"], "discovery_v1_onnx": ["1"]})
    assert registry.version("ranker_v2") == 1 and registry.has_discovery("ranker_v2")


def test_discovery_model_on_other_features_stops_start_up(tmp_path: Path) -> None:
    root = _repository(tmp_path, discovery_features=["other"])
    with pytest.raises(ConfigError, match="discovery_v1_onnx"):
        ModelRegistry(root, ["ranker_v2"]).validate_repository()
