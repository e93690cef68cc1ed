"""Configuration: shipped profiles load, overrides apply, bad keys are named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway import config
from gateway.config import ConfigError, load_settings
from tests.conftest import REPO


@pytest.mark.parametrize("profile", ["local.yaml", "production.yaml"])
def test_shipped_profiles_load(profile: str) -> None:
    settings = load_settings(REPO / "infra" / "config" / profile, {})
    assert settings.model.candidate_generator.candidates == 500
    experiment, surface = settings.ab_testing.experiments
    assert [(v.name, v.model, v.weight) for v in experiment.variants] == [
        ("control", "ranker_v2", 0.9),
        ("treatment", "ranker_v3", 0.1),
    ]
    # MIXED against today's default list, in a layer of its own (overlapping the ranker's)
    assert (surface.name, surface.layer, surface.primary_metric) == (
        "mixed_vs_buy_again",
        "surface",
        "discovery_purchase_share",
    )
    assert [(v.name, v.model, v.serve_surface) for v in surface.variants] == [
        ("control", None, False),
        ("treatment", None, True),
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


def test_processes_default_to_the_cores_we_may_use_and_an_explicit_count_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_quota = tmp_path / "no-cgroup" / "cpu.max"
    monkeypatch.setattr(config, "_CPU_MAX", no_quota)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert config.available_cores() == 4
    assert load_settings(None, {}).serving.processes == 4
    assert load_settings(None, {"RECSYS__SERVING__PROCESSES": "1"}).serving.processes == 1
    # A container's CPU quota (cgroup v2 cpu.max: 1.5 CPUs) caps it, rounded up.
    no_quota.parent.mkdir()
    no_quota.write_text("150000 100000\n")
    assert config.available_cores() == 2
    no_quota.write_text("max 100000\n")
    assert config.available_cores() == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(200)))
    assert load_settings(None, {}).serving.processes == config.MAX_PROCESSES
    with pytest.raises(ConfigError, match="serving.processes"):
        load_settings(None, {"RECSYS__SERVING__PROCESSES": "0"})


def test_only_the_environment_main_passes_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS__SERVING__PORT", "50123")
    assert load_settings(None, {}).serving.port == 50051
    assert load_settings(None, {"RECSYS__SERVING__PORT": "50123"}).serving.port == 50123


def test_list_override_is_json_and_empty_segments_are_named() -> None:
    settings = load_settings(
        REPO / "infra/config/local.yaml", {"RECSYS__AB_TESTING__EXPERIMENTS": "[]"}
    )
    assert settings.ab_testing.experiments == ()
    with pytest.raises(ConfigError, match="RECSYS__SERVING____PORT: empty key segment"):
        load_settings(None, {"RECSYS__SERVING____PORT": "1"})
    with pytest.raises(ConfigError, match="invalid environment override"):
        load_settings(None, {"RECSYS__AB_TESTING__EXPERIMENTS": "[not json"})


def test_inference_goes_to_tritons_http_port_below_the_grpc_one_unless_told() -> None:
    def http_url(**env: str) -> str | None:
        overrides = {f"RECSYS__MODEL__RANKER__{k.upper()}": v for k, v in env.items()}
        return load_settings(None, overrides).model.ranker.inference_http_url()

    assert http_url() == "127.0.0.1:8000"  # Triton's own 8000 / 8001 pair
    assert http_url(triton_grpc_url="triton.ns.svc:9001") == "triton.ns.svc:9000"
    assert http_url(triton_http_url="triton-http:80") == "triton-http:80"
    assert http_url(inference_protocol="grpc") is None
    with pytest.raises(ConfigError, match=r"model\.ranker.*gives no HTTP port"):
        load_settings(None, {"RECSYS__MODEL__RANKER__TRITON_GRPC_URL": "triton"})
    with pytest.raises(ConfigError, match=r"triton_http_url 'triton-http' is not host:port"):
        load_settings(None, {"RECSYS__MODEL__RANKER__TRITON_HTTP_URL": "triton-http"})
    with pytest.raises(ConfigError, match=r"model\.ranker\.inference_protocol"):
        load_settings(None, {"RECSYS__MODEL__RANKER__INFERENCE_PROTOCOL": "udp"})
