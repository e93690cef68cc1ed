"""The sidecar's config loading, the admin commands on the embedded JSON state, and the sidecar
opening the embedded backend."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest

from ab.__main__ import main
from ab.sidecar_settings import SettingsError, load_sidecar_settings

REPO = Path(__file__).resolve().parents[3]


def test_production_config_loads_our_sections_only() -> None:
    settings = load_sidecar_settings(REPO / "infra" / "config" / "production.yaml", {})
    assert settings.uses_postgres
    assert settings.feature_store.postgres.dsn.startswith("postgresql://")
    assert [(e.name, e.layer) for e in settings.ab_testing.experiments] == [
        ("ranker_v2_vs_v3", "main"),
        ("mixed_vs_buy_again", "surface"),
    ]
    assert settings.ab_testing.controller.metrics_port == 9465


def test_environment_overrides_apply_to_our_sections() -> None:
    settings = load_sidecar_settings(
        REPO / "infra" / "config" / "local.yaml",
        {
            "RECSYS__AB_TESTING__CONTROLLER__INTERVAL_S": "5",
            "RECSYS__SERVING__PORT": "not-ours",  # the gateway validates its own sections
        },
    )
    assert settings.ab_testing.controller.interval_s == 5.0
    assert not settings.uses_postgres


def test_unknown_key_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("ab_testing:\n  controller:\n    intervall_s: 3\n")
    with pytest.raises(SettingsError, match=r"ab_testing\.controller\.intervall_s"):
        load_sidecar_settings(path, {})


def test_admin_commands_on_the_embedded_state_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state.json"
    monkeypatch.setenv("RECSYS__AB_TESTING__CONTROLLER__STATE_FILE", str(state))
    config = str(REPO / "infra" / "config" / "local.yaml")
    assert main(["experiments", "rollback", "--config", config, "ranker_v2_vs_v3"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "rolled_back"
    assert shown["weights"] == {"control": 1.0, "treatment": 0.0}
    assert json.loads(state.read_text())["ranker_v2_vs_v3"]["status"] == "rolled_back"
    assert main(["experiments", "list", "--config", config]) == 0
    rows = {row["experiment"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["ranker_v2_vs_v3"]["status"] == "rolled_back"
    assert rows["mixed_vs_buy_again"]["status"] == "running"  # another layer: untouched
    assert main(["experiments", "show", "--config", config, "missing"]) == 2
    assert "unknown experiment 'missing'" in capsys.readouterr().err


def test_sidecar_on_the_embedded_backend_names_a_taken_metrics_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The embedded backend opens (its SQLite files are created here); a metrics port held by
    # another process then stops the sidecar with the key's name, before any evaluation.
    for key, name in (
        ("FEATURE_STORE__EMBEDDED__EVENT_LOG_PATH", "events.sqlite3"),
        ("AB_TESTING__EXPOSURE_LOG_PATH", "exposures.sqlite3"),
        ("AB_TESTING__CONTROLLER__STATE_FILE", "state.json"),
    ):
        monkeypatch.setenv(f"RECSYS__{key}", str(tmp_path / name))
    config = str(REPO / "infra" / "config" / "local.yaml")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        monkeypatch.setenv("RECSYS__AB_TESTING__CONTROLLER__METRICS_HOST", "127.0.0.1")
        monkeypatch.setenv(
            "RECSYS__AB_TESTING__CONTROLLER__METRICS_PORT", str(held.getsockname()[1])
        )
        try:
            assert main(["sidecar", "--config", config]) == 2
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
    assert "ab_testing.controller.metrics_port: cannot listen" in capsys.readouterr().err
    assert (tmp_path / "exposures.sqlite3").is_file() and (tmp_path / "events.sqlite3").is_file()
