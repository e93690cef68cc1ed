"""The controller, routing, admin commands, report and sidecar process on a real Postgres."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import asyncpg
import pytest
import yaml
from prometheus_client import CollectorRegistry

from ab.__main__ import main
from ab.backends import PostgresMetricsDatabase
from ab.config import ExperimentConfig, GuardrailConfig, VariantConfig
from ab.controller import Controller
from ab.prometheus_metrics import SidecarMetrics
from ab.routing import RoutingPoller, RoutingTable
from ab.store import PostgresStateStore
from ab.variant_sums import ExperimentMetrics
from feature_service.config import PostgresSettings
from infra.local.ports import free_port
from tests.integration.ab.simulate import ArmBehaviour, load, simulate

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
EXPERIMENT = ExperimentConfig(
    name="ranker_v2_vs_v3",
    salt="e2e_salt",
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


async def _decide(pool: asyncpg.Pool) -> tuple[str, CollectorRegistry]:
    registry = CollectorRegistry()
    controller = Controller(
        [EXPERIMENT],
        ExperimentMetrics(PostgresMetricsDatabase(pool)),
        PostgresStateStore(pool),
        SidecarMetrics(registry),
    )
    [evaluation] = await controller.run_once()
    return evaluation.decision, registry


async def test_worse_treatment_is_rolled_back_and_routed_to_control(pool: asyncpg.Pool) -> None:
    await load(pool, *simulate(EXPERIMENT, 1500, WORSE))
    table = RoutingTable([EXPERIMENT])
    async with RoutingPoller(table, PostgresStateStore(pool), interval_s=0.05):
        before = Counter(r.assignment.variant for u in USERS if (r := table.assign(u)))
        assert before["treatment"] > 800

        decision, registry = await _decide(pool)

        assert decision == "rollback"
        for _ in range(100):  # the poller picks the decision up within its interval
            if table.states.get(EXPERIMENT.name) is not None:
                break
            await asyncio.sleep(0.05)
        after = Counter(r.assignment.variant for u in USERS if (r := table.assign(u)))
    assert after == {"control": len(USERS)}
    states = await PostgresStateStore(pool).load_states()
    assert states[EXPERIMENT.name].status == "rolled_back"
    [audit] = await PostgresStateStore(pool).decisions(EXPERIMENT.name)
    assert audit.decision == "rollback" and "ctr" in audit.reason
    assert audit.evidence["guardrails"][0]["breached"] is True
    labels = {"experiment": EXPERIMENT.name, "decision": "rollback"}
    assert registry.get_sample_value("recsys_experiment_decisions_total", labels) == 1.0
    guardrail = {"experiment": EXPERIMENT.name, "metric": "ctr"}
    assert registry.get_sample_value("recsys_experiment_guardrail_breached", guardrail) == 1.0


async def test_better_treatment_is_promoted(pool: asyncpg.Pool) -> None:
    await load(pool, *simulate(EXPERIMENT, 1500, BETTER))
    decision, _ = await _decide(pool)
    assert decision == "promote"
    store = PostgresStateStore(pool)
    state = (await store.load_states())[EXPERIMENT.name]
    assert state.status == "promoted" and state.weights == {"control": 0.0, "treatment": 1.0}
    table = RoutingTable([EXPERIMENT], await store.load_states())
    assert {r.assignment.variant for u in USERS if (r := table.assign(u))} == {"treatment"}
    [audit] = await store.decisions(EXPERIMENT.name)
    assert audit.evidence["primary"][0]["p_value"] < 0.05


def _config(tmp_path: Path, pg: PostgresSettings, **controller: object) -> Path:
    path = tmp_path / "config.yaml"
    experiment = EXPERIMENT.model_dump(mode="json", exclude_defaults=True)
    experiment["variants"] = [v.model_dump(mode="json") for v in EXPERIMENT.variants]
    path.write_text(
        yaml.safe_dump(
            {
                "serving": {"port": 50051},  # the gateway's sections are left to the gateway
                "feature_store": {"backend": "redis_postgres", "postgres": {"dsn": pg.dsn}},
                "ab_testing": {"experiments": [experiment], "controller": controller},
            }
        )
    )
    return path


async def test_admin_commands_write_state_and_audit(
    pool: asyncpg.Pool,
    pg_settings: PostgresSettings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = str(_config(tmp_path, pg_settings))

    async def run(*argv: str) -> tuple[int, str]:
        code = await asyncio.to_thread(main, list(argv))
        captured = capsys.readouterr()
        return code, captured.out if code == 0 else captured.err

    code, out = await run("experiments", "list", "--config", config)
    assert code == 0 and json.loads(out)[0]["status"] == "running"
    code, out = await run(
        "experiments", "set-weights", "--config", config, EXPERIMENT.name,
        "control=1", "treatment=3", "--reason", "ramp up",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["weights"] == {"control": 0.25, "treatment": 0.75}
    table = RoutingTable([EXPERIMENT], await PostgresStateStore(pool).load_states())
    served = table.experiment(EXPERIMENT.name)
    assert served is not None and [v.weight for v in served.variants] == [0.25, 0.75]

    code, out = await run("experiments", "rollback", "--config", config, EXPERIMENT.name)
    assert code == 0 and json.loads(out)["status"] == "rolled_back"
    code, out = await run("experiments", "stop", "--config", config, EXPERIMENT.name)
    shown = json.loads(out)
    assert code == 0 and shown["status"] == "stopped" and not shown["enabled"]
    assert [d["decision"] for d in shown["decisions"]] == ["set_weights", "rollback", "stop"]
    assert shown["decisions"][0]["reason"] == "ramp up"
    assert shown["decisions"][0]["evidence"]["source"] == "admin"

    code, out = await run(
        "experiments", "set-weights", "--config", config, EXPERIMENT.name, "nope=1"
    )
    assert code == 2 and "variants" in out


async def test_analyze_writes_a_markdown_report(
    pool: asyncpg.Pool,
    pg_settings: PostgresSettings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await load(pool, *simulate(EXPERIMENT, 400, BETTER, days=2))
    await _decide(pool)
    config = str(_config(tmp_path, pg_settings))
    argv = ["analyze", "--config", config, "--experiment", EXPERIMENT.name, "--out", str(tmp_path)]
    assert await asyncio.to_thread(main, argv) == 0
    report = (tmp_path / f"{EXPERIMENT.name}.md").read_text()
    for heading in (
        "## Metrics per variant",
        "## Effects",
        "## Sample-ratio mismatch",
        "## Decision history",
        "## Cumulative lift per day",
        "| 2026-03-02 |",
        "| 2026-03-03 |",
        "| conversion_rate |",
    ):
        assert heading in report, heading
    assert "promote" in report or "continue" not in report
    assert "![ranker_v2_vs_v3_lift.png](ranker_v2_vs_v3_lift.png)" in report
    written = {p.name for p in tmp_path.iterdir()}
    for kind in ("lift", "arms", "decisions"):
        assert {f"{EXPERIMENT.name}_{kind}.png", f"{EXPERIMENT.name}_{kind}.svg"} <= written
    document = json.loads((tmp_path / f"{EXPERIMENT.name}.json").read_text())
    assert [p["label"] for p in document["periods"]] == ["2026-03-02", "2026-03-03", "2026-03-04"]
    audit = await PostgresStateStore(pool).decisions(EXPERIMENT.name)
    assert [d["decision"] for d in document["decisions"]] == [d.decision for d in audit]
    # the last period ends after the last exposure: its cumulative figures are the totals
    totals = {arm: {k: v for k, v in s.items() if k != "values"} for arm, s in
              document["variants"].items()}  # fmt: skip
    last = document["periods"][-1]["variants"]
    assert set(last) == set(totals) == {"control", "treatment"}
    for arm, sums in totals.items():
        assert last[arm]["users"] == sums["users"]
        assert last[arm]["revenue"] == pytest.approx(sums["revenue"], rel=1e-12)
    # The better treatment is probably better: P(higher) of its conversion rate above 50%.
    effects = report.split("## Effects")[1].split("## Sample-ratio")[0]
    assert "| P(higher) |" in effects and "not a decision rule" in effects
    row = next(line for line in effects.splitlines() if "| conversion_rate |" in line)
    chance = float(row.rstrip(" |").rsplit("|", 1)[1].strip().rstrip("%"))
    assert 50.0 < chance <= 100.0


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


async def test_sidecar_process_decides_serves_metrics_and_stops_on_sigterm(
    pool: asyncpg.Pool, pg_settings: PostgresSettings, tmp_path: Path
) -> None:
    await load(pool, *simulate(EXPERIMENT, 1500, WORSE))
    port = free_port()
    config = _config(tmp_path, pg_settings, interval_s=0.5, metrics_port=port,
                     metrics_host="127.0.0.1")  # fmt: skip
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
        stderr = err.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    decision = next(entry for entry in logs if entry.get("event") == "experiment_decision")
    assert decision["decision"] == "rollback" and decision["level"] == "WARNING"
    assert any(entry.get("message") == "ab sidecar stopped" for entry in logs)
