"""Configuration: shipped profiles load, overrides apply, bad keys are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_settings
from tests.conftest import REPO


@pytest.mark.parametrize("profile", ["local.yaml", "production.yaml"])
def test_shipped_profiles_load(profile: str) -> None:
    settings = load_settings(REPO / "infra" / "config" / profile, {})
    assert settings.model.candidate_generator.candidates == 500
    (experiment,) = settings.ab_testing.experiments
    assert [(v.name, v.model, v.weight) for v in experiment.variants] == [
        ("control", "ranker_v2", 0.9),
        ("treatment", "ranker_v3", 0.1),
    ]


def test_defaults_without_a_file() -> None:
    settings = load_settings(None, {})
    assert (settings.serving.host, settings.serving.port) == ("127.0.0.1", 50051)
    assert settings.feature_store.backend == "embedded"


def test_environment_overrides_nested_keys() -> None:
    settings = load_settings(
        REPO / "infra/config/local.yaml",
        {
            "RECSYS__SERVING__PORT": "50099",
            "RECSYS__MODEL__RERANKER__FILTER_RECENTLY_VIEWED": "false",
            "RECSYS__FEATURE_STORE__REDIS__PASSWORD": "12345",
            "UNRELATED": "ignored",
        },
    )
    assert settings.serving.port == 50099
    assert settings.model.reranker.filter_recently_viewed is False
    password = settings.feature_store.redis.password
    assert password is not None and password.get_secret_value() == "12345"
    assert "12345" not in repr(settings)  # secrets never print


def test_unknown_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("serving:\n  prot: 1\n")
    with pytest.raises(ConfigError, match=r"serving\.prot: Extra inputs are not permitted"):
        load_settings(config, {})


def test_unknown_environment_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"model\.ranker\.timeout: Extra inputs"):
        load_settings(None, {"RECSYS__MODEL__RANKER__TIMEOUT": "3"})


def test_invalid_value_is_named(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  candidate_generator:\n    candidates: 3\n")
    with pytest.raises(
        ConfigError,
        match=r"model\.candidate_generator\.candidates: Input should "
        r"be greater than or equal to 10",
    ):
        load_settings(config, {})


def test_experiment_weights_must_sum_to_one(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "ab_testing:\n  experiments:\n    - name: e\n      salt: s\n      variants:\n"
        "        - {name: a, model: m, weight: 0.5}\n        - {name: b, model: m, weight: 0.6}\n"
    )
    with pytest.raises(
        ConfigError,
        match=r"ab_testing\.experiments\.0: Value error, variant " r"weights sum to 1\.1",
    ):
        load_settings(config, {})


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.yaml", {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(bad, {})
