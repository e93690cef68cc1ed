"""MIXED's discovery weight at start-up: configured, else the one `make models` chose on the
validation queries for the models it built, else the default."""

from __future__ import annotations

import json
from pathlib import Path

from feature_service.surfaces import DISCOVERY_WEIGHT
from gateway.resources import served_discovery_weight
from triton_models.config import EVALUATION_REPORT, ModelSettings, RerankerSettings


def _report(artifacts: Path, report: dict[str, object]) -> None:
    (artifacts / "reports").mkdir(parents=True)
    (artifacts / "reports" / EVALUATION_REPORT).write_text(json.dumps(report))


def test_the_builds_validation_choice_is_served(tmp_path: Path) -> None:
    _report(tmp_path, {"discovery_weight": {"weight": 0.13, "grid": {}}})
    assert served_discovery_weight(ModelSettings(artifacts_dir=tmp_path)) == 0.13


def test_a_configured_weight_wins(tmp_path: Path) -> None:
    _report(tmp_path, {"discovery_weight": {"weight": 0.13}})
    configured = ModelSettings(
        artifacts_dir=tmp_path, reranker=RerankerSettings(discovery_weight=0.0)
    )
    assert served_discovery_weight(configured) == 0.0


def test_default_without_a_report_or_a_choice(tmp_path: Path) -> None:
    model = ModelSettings(artifacts_dir=tmp_path)
    assert served_discovery_weight(model) == DISCOVERY_WEIGHT
    # No weight kept recall within bounds on validation: the report says None.
    _report(tmp_path, {"discovery_weight": {"weight": None}})
    assert served_discovery_weight(model) == DISCOVERY_WEIGHT
