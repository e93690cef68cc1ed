"""One decision-maker: three real sidecar processes on one real Postgres share the leader
lease; exactly one evaluates each interval, another takes over within two intervals of the
leader's SIGKILL, and the audit table holds each decision once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ab.config import ExperimentConfig, GuardrailConfig, VariantConfig
from ab.leader import PostgresLease
from ab.store import ExperimentState, LeaderLock, LeaseLostError, PostgresStateStore
from feature_service.config import PostgresSettings
from infra.local.ports import free_port
from tests.integration.ab.simulate import ArmBehaviour, load, simulate

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
INTERVAL_S = 1.0
EXPERIMENT = ExperimentConfig(
    name="lease_rollback",
    salt="lease_salt",
    variants=(
        VariantConfig(name="control", model="ranker_v2", weight=0.5),
        VariantConfig(name="treatment", model="ranker_v3", weight=0.5),
    ),
    primary_metric="conversion_rate",
    guardrails=(GuardrailConfig(metric="ctr", max_relative_degradation=0.05),),
    min_users_per_variant=300,
    decision_policy="sequential",
)
# Never decided (no data for it): keeps every round doing real work after the rollback.
STEADY = ExperimentConfig(
    name="lease_steady",
    salt="steady_salt",
    variants=(
        VariantConfig(name="control", model="ranker_v2", weight=0.5),
        VariantConfig(name="treatment", model="ranker_v3", weight=0.5),
    ),
    primary_metric="conversion_rate",
)
WORSE = {"control": ArmBehaviour(0.20, 0.2), "treatment": ArmBehaviour(0.12, 0.2)}


@dataclass
class Sidecar:
    process: asyncio.subprocess.Process
    port: int

    def scrape(self) -> dict[str, float]:
        """(leader gauge, ok rounds) read from its metrics endpoint."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "recsys_experiment_controller_leader":
                    out["leader"] = sample.value
                elif sample.name == "recsys_experiment_evaluations_total":
                    out[sample.labels["result"]] = sample.value
        return out


def _config(tmp_path: Path, pg: PostgresSettings, port: int) -> Path:
    path = tmp_path / f"sidecar-{port}.yaml"
    experiments = []
    for experiment in (EXPERIMENT, STEADY):
        raw = experiment.model_dump(mode="json", exclude_defaults=True)
        raw["variants"] = [v.model_dump(mode="json") for v in experiment.variants]
        experiments.append(raw)
    controller = {"interval_s": INTERVAL_S, "metrics_port": port, "metrics_host": "127.0.0.1"}
    path.write_text(
        yaml.safe_dump(
            {
                "feature_store": {"backend": "redis_postgres", "postgres": {"dsn": pg.dsn}},
                "ab_testing": {"experiments": experiments, "controller": controller},
            }
        )
    )
    return path


@pytest.fixture
async def sidecars(
    pool: asyncpg.Pool, pg_settings: PostgresSettings, tmp_path: Path
) -> AsyncIterator[list[Sidecar]]:
    """Three sidecar processes started together on data whose treatment must be rolled back."""
    await load(pool, *simulate(EXPERIMENT, 1500, WORSE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS__")}
    started: list[Sidecar] = []
    ports: set[int] = set()
    while len(ports) < 3:  # free_port may hand out a port twice in a row
        ports.add(free_port())
    try:
        for port in sorted(ports):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ab", "sidecar",
                "--config", str(_config(tmp_path, pg_settings, port)),
                cwd=REPO, env=env,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            started.append(Sidecar(process, port))
        yield started
    finally:
        for sidecar in started:
            if sidecar.process.returncode is None:
                sidecar.process.kill()
            await sidecar.process.wait()


async def _scrape_all(sidecars: Sequence[Sidecar]) -> list[dict[str, float]]:
    return [await asyncio.to_thread(s.scrape) for s in sidecars]


async def _until_one_leads(sidecars: Sequence[Sidecar], timeout_s: float) -> Sidecar:
    """The one sidecar whose leader gauge is 1 and that has evaluated, once there is one."""
    deadline = time.monotonic() + timeout_s
    while True:
        for s in sidecars:
            assert s.process.returncode is None, f"sidecar on {s.port} exited"
        try:
            scraped = await _scrape_all(sidecars)
        except OSError:  # not listening yet
            scraped = []
        leaders = [s for s, m in zip(sidecars, scraped, strict=False) if m.get("leader") == 1.0]
        assert len(leaders) <= 1, f"two leaders at once: {scraped}"
        if len(leaders) == 1 and scraped[sidecars.index(leaders[0])].get("ok", 0.0) >= 1.0:
            return leaders[0]
        assert time.monotonic() < deadline, f"no leader after {timeout_s} s: {scraped}"
        await asyncio.sleep(0.05)


async def _assert_only_leader_evaluates(sidecars: Sequence[Sidecar], leader: Sidecar) -> None:
    """Over three intervals the leader evaluates every interval and nobody else does."""
    before = await _scrape_all(sidecars)
    await asyncio.sleep(3 * INTERVAL_S)
    after = await _scrape_all(sidecars)
    for s, b, a in zip(sidecars, before, after, strict=True):
        if s is leader:
            assert a["leader"] == 1.0
            assert a["ok"] - b["ok"] >= 2, (b, a)  # 3 intervals: 2-4 rounds, scrape timing
            assert a["error"] == 0.0
        else:
            assert a["leader"] == 0.0 and a["ok"] == b["ok"] and a["error"] == 0.0, (b, a)


async def test_one_leader_evaluates_and_another_takes_over_after_sigkill(
    sidecars: list[Sidecar], pool: asyncpg.Pool
) -> None:
    leader = await _until_one_leads(sidecars, timeout_s=60)
    await _assert_only_leader_evaluates(sidecars, leader)

    leader.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    await leader.process.wait()
    followers = [s for s in sidecars if s is not leader]
    successor = await _until_one_leads(followers, timeout_s=30)
    takeover_s = time.monotonic() - killed_at
    assert takeover_s <= 2 * INTERVAL_S, f"takeover took {takeover_s:.2f} s"
    print(f"\nleader lease: another sidecar evaluating {takeover_s:.2f} s after SIGKILL")
    await _assert_only_leader_evaluates(followers, successor)

    # Postgres ends the lease sessions (a failover, pg_terminate_backend): the leader notices
    # at its next round and stops deciding, and one sidecar takes the lease again.
    ended = await pool.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = 'recsys-ab-leader'"
    )
    assert ended == 2  # the leader's session and the follower's
    # Each notices at its next round (until then the old leader's gauge still says 1).
    await asyncio.sleep(1.5 * INTERVAL_S)
    await _assert_only_leader_evaluates(followers, await _until_one_leads(followers, 30))

    rows = await pool.fetch(
        "SELECT experiment, decision, count(*) AS n FROM decisions GROUP BY experiment, decision"
    )
    assert [(r["experiment"], r["decision"], r["n"]) for r in rows] == [
        (EXPERIMENT.name, "rollback", 1)
    ]
    state = await pool.fetchrow(
        "SELECT status FROM experiment_state WHERE experiment = $1", EXPERIMENT.name
    )
    assert state is not None and state["status"] == "rolled_back"


async def test_a_decision_is_written_only_while_its_lease_is_held(
    pool: asyncpg.Pool, pg_settings: PostgresSettings
) -> None:
    store = PostgresStateStore(pool)
    state = ExperimentState(EXPERIMENT.name, "rolled_back", {"control": 1.0, "treatment": 0.0})
    lease = PostgresLease(pg_settings)
    assert lease.lock is None  # not leading yet
    assert await lease.hold()
    held = lease.lock
    assert held is not None
    await store.record_decision(state, "rollback", "while leading", {}, leader=held)
    # Another session's pid, or the same key released: the check inside the write's
    # transaction refuses, and the transaction writes nothing.
    with pytest.raises(LeaseLostError, match="no longer holds the controller lease"):
        await store.record_decision(
            state, "promote", "someone else", {}, leader=LeaderLock(held.session_pid + 1, held.key)
        )
    await lease.release()
    with pytest.raises(LeaseLostError):
        await store.record_decision(state, "promote", "after losing it", {}, leader=held)
    assert [d.reason for d in await store.decisions(EXPERIMENT.name)] == ["while leading"]
    assert (await store.load_states())[EXPERIMENT.name].status == "rolled_back"
