"""Experiments on the embedded store of `make run`: the controller reads the gateways' SQLite
exposure and event logs, decides as it does on Postgres (same decision, reason and evidence
from the same traffic), writes the JSON state and audit log that routing follows; the sidecar
process and `analyze` run on the same files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from prometheus_client import CollectorRegistry

from ab.__main__ import main
from ab.backends import PostgresMetricsDatabase, SqliteMetricsDatabase
from ab.config import ExperimentConfig, GuardrailConfig, VariantConfig
from ab.controller import Controller, Evaluation
from ab.prometheus_metrics import SidecarMetrics
from ab.routing import RoutingPoller, RoutingTable
from ab.store import JsonStateStore, PostgresStateStore, StateStore
from ab.variant_sums import ExperimentMetrics
from infra.local.ports import free_port
from tests.integration.ab.simulate import ArmBehaviour, load, load_sqlite, simulate

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
EXPERIMENT = ExperimentConfig(
    name="ranker_v2_vs_v3",
    salt="embedded_salt",
    variants=(
        VariantConfig(name="control", model="ranker_v2", weight=0.5),
        VariantConfig(name="treatment", model="ranker_v3", weight=0.5),
    ),
    primary_metric="conversion_rate",
    guardrails=(GuardrailConfig(metric="ctr", max_relative_degradation=0.05),),
    min_users_per_variant=300,
    decision_policy="sequential",
)
USERS = [f"u{i}" for i in range(2000)]
WORSE = {"control": ArmBehaviour(0.20, 0.2), "treatment": ArmBehaviour(0.12, 0.2)}
BETTER = {"control": ArmBehaviour(0.20, 0.10), "treatment": ArmBehaviour(0.20, 0.30)}
NOW = datetime(2026, 3, 6, tzinfo=UTC)  # after the simulated traffic; decisions are stamped so


async def _evaluate(metrics: ExperimentMetrics, store: StateStore) -> Evaluation:
    controller = Controller(
        [EXPERIMENT], metrics, store, SidecarMetrics(CollectorRegistry()), clock=lambda: NOW
    )
    [evaluation] = await controller.run_once()
    return evaluation


def _flat(evidence: Any, path: str = "") -> dict[str, Any]:
    """Evidence as {path: leaf}, to compare floats approximately: the two databases add the
    same numbers in other orders."""
    if isinstance(evidence, dict):
        return {
            k: v for key, item in evidence.items() for k, v in _flat(item, f"{path}.{key}").items()
        }
    if isinstance(evidence, list | tuple):
        return {
            k: v for i, item in enumerate(evidence) for k, v in _flat(item, f"{path}[{i}]").items()
        }
    return {path: evidence}


@pytest.mark.parametrize(
    ("behaviour", "decision"), [(WORSE, "rollback"), (BETTER, "promote")], ids=["worse", "better"]
)
async def test_embedded_and_postgres_decide_the_same(
    behaviour: dict[str, ArmBehaviour], decision: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    traffic = simulate(EXPERIMENT, 1000, behaviour)
    exposure_log, event_log = tmp_path / "exposures.sqlite3", tmp_path / "events.sqlite3"
    await load_sqlite(exposure_log, event_log, *traffic)
    await load(pool, *traffic)
    database = await SqliteMetricsDatabase.open(exposure_log, event_log)
    json_store = JsonStateStore(tmp_path / "experiment_state.json")
    try:
        embedded = await _evaluate(ExperimentMetrics(database), json_store)
    finally:
        await database.close()
    postgres_store = PostgresStateStore(pool)
    postgres = await _evaluate(ExperimentMetrics(PostgresMetricsDatabase(pool)), postgres_store)

    assert embedded.decision == postgres.decision == decision
    assert (embedded.status, embedded.weights) == (postgres.status, postgres.weights)
    assert embedded.reason == postgres.reason
    embedded_evidence, postgres_evidence = _flat(embedded.evidence), _flat(postgres.evidence)
    assert embedded_evidence.keys() == postgres_evidence.keys()
    for key, value in embedded_evidence.items():
        if isinstance(value, float):
            assert value == pytest.approx(postgres_evidence[key], rel=1e-9, abs=1e-12), key
        else:
            assert value == postgres_evidence[key], key
    # the same state and audit row on both stores
    [json_state] = (await json_store.load_states()).values()
    [pg_state] = (await postgres_store.load_states()).values()
    assert (json_state.status, json_state.weights) == (pg_state.status, pg_state.weights)
    [json_audit] = await json_store.decisions(EXPERIMENT.name)
    [pg_audit] = await postgres_store.decisions(EXPERIMENT.name)
    assert (json_audit.decision, json_audit.reason) == (pg_audit.decision, pg_audit.reason)
    assert json_audit.decided_at == pg_audit.decided_at == NOW


async def test_a_rollback_on_the_embedded_store_reaches_routing(tmp_path: Path) -> None:
    exposure_log, event_log = tmp_path / "exposures.sqlite3", tmp_path / "events.sqlite3"
    await load_sqlite(exposure_log, event_log, *simulate(EXPERIMENT, 1000, WORSE))
    store = JsonStateStore(tmp_path / "experiment_state.json")
    table = RoutingTable([EXPERIMENT])
    database = await SqliteMetricsDatabase.open(exposure_log, event_log)
    try:
        # a gateway process polls the JSON state the controller writes
        async with RoutingPoller(table, JsonStateStore(store.path), interval_s=0.05):
            before = Counter(r.assignment.variant for u in USERS if (r := table.assign(u)))
            assert before["treatment"] > 800  # of 2,000 users
            evaluation = await _evaluate(ExperimentMetrics(database), store)
            assert evaluation.decision == "rollback"
            for _ in range(100):
                if table.states.get(EXPERIMENT.name) is not None:
                    break
                await asyncio.sleep(0.05)
            after = Counter(r.assignment.variant for u in USERS if (r := table.assign(u)))
    finally:
        await database.close()
    assert after == {"control": len(USERS)}


def _config(tmp_path: Path, **controller: object) -> Path:
    path = tmp_path / "config.yaml"
    experiment = EXPERIMENT.model_dump(mode="json", exclude_defaults=True)
    experiment["variants"] = [v.model_dump(mode="json") for v in EXPERIMENT.variants]
    path.write_text(
        yaml.safe_dump(
            {
                "serving": {"port": 50051},  # the gateway's sections are left to the gateway
                "feature_store": {
                    "backend": "embedded",
                    "embedded": {"event_log_path": str(tmp_path / "events.sqlite3")},
                },
                "ab_testing": {
                    "experiments": [experiment],
                    "exposure_log_path": str(tmp_path / "exposures.sqlite3"),
                    "controller": {
                        "state_file": str(tmp_path / "experiment_state.json"),
                        **controller,
                    },
                },
            }
        )
    )
    return path


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_sidecar_process_decides_on_the_embedded_files(tmp_path: Path) -> None:
    await load_sqlite(
        tmp_path / "exposures.sqlite3",
        tmp_path / "events.sqlite3",
        *simulate(EXPERIMENT, 800, WORSE),
    )
    port = free_port()
    config = _config(tmp_path, interval_s=0.5, metrics_port=port, metrics_host="127.0.0.1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS__")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ab", "sidecar", "--config", str(config),
        cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    rollback = (
        f'recsys_experiment_decisions_total{{decision="rollback",experiment="{EXPERIMENT.name}"}}'
    )
    try:
        deadline = time.monotonic() + 30
        value = None
        while time.monotonic() < deadline and process.returncode is None:
            value = await asyncio.to_thread(_metric, port, rollback)
            if value == 1.0:
                break
            await asyncio.sleep(0.2)
        assert value == 1.0, "the sidecar did not roll back in time"
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    state = json.loads((tmp_path / "experiment_state.json").read_text())
    assert state[EXPERIMENT.name]["status"] == "rolled_back"
    assert state[EXPERIMENT.name]["weights"] == {"control": 1.0, "treatment": 0.0}
    audit = (tmp_path / "experiment_state.json.decisions.jsonl").read_text().splitlines()
    assert [json.loads(line)["decision"] for line in audit] == ["rollback"]


async def test_analyze_reads_the_embedded_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await load_sqlite(
        tmp_path / "exposures.sqlite3",
        tmp_path / "events.sqlite3",
        *simulate(EXPERIMENT, 400, BETTER, days=2),
    )
    out = tmp_path / "report"
    argv = ["analyze", "--config", str(_config(tmp_path)), "--experiment", EXPERIMENT.name,
            "--out", str(out), "--period", "12h"]  # fmt: skip
    assert await asyncio.to_thread(main, argv) == 0
    printed = capsys.readouterr().out.split()
    assert printed[0] == str(out / f"{EXPERIMENT.name}.md")
    assert {Path(p).name for p in printed} == {p.name for p in out.iterdir()}
    document = json.loads((out / f"{EXPERIMENT.name}.json").read_text())
    # 2 days from 08:00 in 12-hour periods: ends at 12:00, 00:00, ..., 12:00 two days later
    ends = [p["end"] for p in document["periods"]]
    assert ends[0] == "2026-03-02T12:00:00+00:00" and ends[-1] == "2026-03-04T12:00:00+00:00"
    assert len(ends) == 5
    lift = (out / f"{EXPERIMENT.name}_lift.csv").read_text().splitlines()
    assert lift[0].startswith("period_end,variant,metric,")
    assert len(lift) == 1 + 5 * 4  # a row per period and metric of the one treatment
    assert (out / f"{EXPERIMENT.name}_lift.png").read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in (out / f"{EXPERIMENT.name}_lift.svg").read_bytes()[:2000]
    report = (out / f"{EXPERIMENT.name}.md").read_text()
    assert "## Cumulative lift per 12 hours" in report and "| 2026-03-03T00:00:00+00:00 |" in report

    argv[-1] = "1s"  # two days in one-second periods: refused, naming the option
    assert await asyncio.to_thread(main, argv) == 2
    assert "--period" in capsys.readouterr().err
