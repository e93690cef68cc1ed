"""Experiments end to end: two ranker versions served by Triton, gateway traffic with simulated
outcomes recorded through RecordEvents, and the controller deciding from the recorded data:
a worse treatment is rolled back (every gateway then routes to control), a better one is
promoted. The rollback runs on the production stores (Redis and Postgres), the promotion on the
embedded store of `make run` (SQLite logs, JSON state), where `analyze` then writes its report,
plots and tables from the real traffic (the README's plot comes from this run).

To refresh the committed copy of that output (benchmarks/results/experiment-e2e/, the README's
plot), run the promotion with the variable that names where it goes:

    RECSYS_E2E_ANALYSIS_DIR=benchmarks/results/experiment-e2e \
        pytest tests/integration/experiments/test_experiment_e2e.py -k promoted
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry
from recsys.v1 import recommendation_pb2 as pb

from ab.__main__ import main as ab_main
from ab.backends import open_backend
from ab.config import (
    ControllerSettings,
    ExperimentConfig,
    GuardrailConfig,
    VariantConfig,
)
from ab.controller import Controller
from ab.prometheus_metrics import SidecarMetrics
from ab.sidecar_settings import SidecarSettings
from gateway.config import Settings
from infra.local.store_servers import PostgresServer, RedisServer
from infra.local.tritonserver import TritonServer
from tests.conftest import async_stub, running_gateway

pytestmark = pytest.mark.integration
USERS = 700  # per run; the minimum sample is 250 users per arm
ANALYSIS_DIR = os.environ.get("RECSYS_E2E_ANALYSIS_DIR")
"""Where the promotion's `analyze` output is copied to when set (it stays in tmp_path too)."""


def _experiment(name: str) -> ExperimentConfig:
    return ExperimentConfig(
        name=name,
        salt=f"{name}-salt",
        variants=(
            VariantConfig(name="control", model="ranker_v2", weight=0.5),
            VariantConfig(name="treatment", model="ranker_v3", weight=0.5),
        ),
        primary_metric="conversion_rate",
        guardrails=(GuardrailConfig(metric="ctr", max_relative_degradation=0.05),),
        min_users_per_variant=250,
        decision_policy="sequential",
    )


def _stamp() -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    return stamp


def _event(
    request_id: str, user: str, item_id: str, position: int, kind: int, tag: str, revenue: float
) -> pb.UserEvent:
    purchase = kind == pb.EVENT_TYPE_PURCHASE
    return pb.UserEvent(
        event_id=f"{request_id}-{tag}{position}",
        type=pb.EventType.ValueType(kind),
        user_id=user,
        item_id=item_id,
        request_id=request_id,
        timestamp=_stamp(),
        position=position,
        quantity=1 if purchase else 0,
        revenue=revenue,
        currency="GBP" if purchase else "",
    )


async def _traffic(
    settings: Settings, behaviour: dict[str, tuple[float, float]], seed: int
) -> tuple[Counter[str], Counter[str]]:
    """Recommend for every user, then impressions, clicks and purchases drawn per arm from
    `behaviour` (click probability, purchase probability per click), recorded as the client
    would. Returns responses per experiment id and per model."""
    rng = random.Random(seed)
    arms: Counter[str] = Counter()
    models: Counter[str] = Counter()
    async with running_gateway(settings) as (_, channel):
        stub = async_stub(channel)
        batch: list[pb.UserEvent] = []
        for u in range(USERS):
            user = f"e2e-{seed}-{u}"
            reply = await stub.Recommend(pb.RecommendRequest(user_id=user, num_items=5), timeout=10)
            arms[reply.experiment_id] += 1
            models[reply.model_version.split("/")[0]] += 1
            ctr, conversion = behaviour[reply.experiment_id.rsplit("_", 1)[1]]
            for position, rec in enumerate(reply.recommendations[:3]):
                ids = (reply.request_id, user, rec.item_id, position)
                batch.append(_event(*ids, pb.EVENT_TYPE_IMPRESSION, "i", 0.0))
                if rng.random() < ctr:
                    batch.append(_event(*ids, pb.EVENT_TYPE_CLICK, "c", 0.0))
                    if rng.random() < conversion:
                        price = round(rec.metadata.price, 2)
                        batch.append(_event(*ids, pb.EVENT_TYPE_PURCHASE, "p", price))
            if len(batch) > 400 or u == USERS - 1:
                await stub.RecordEvents(pb.RecordEventsRequest(events=batch), timeout=10)
                batch = []
    return arms, models


def _sidecar_settings(settings: Settings) -> SidecarSettings:
    """The sections of the gateway's settings the sidecar and the ab CLI read."""
    return SidecarSettings(ab_testing=settings.ab_testing, feature_store=settings.feature_store)


async def _decide(settings: Settings, experiment: ExperimentConfig) -> str:
    """One evaluation round, as the sidecar runs it, on the gateway's backend."""
    async with open_backend(_sidecar_settings(settings), max_connections=2) as backend:
        controller = Controller(
            [experiment], backend.metrics, backend.store, SidecarMetrics(CollectorRegistry())
        )
        await asyncio.sleep(1.0)  # the exposure recorder flushes every 0.5 s
        [evaluation] = await controller.run_once()
        return evaluation.decision


def _analyze(settings: Settings, experiment: ExperimentConfig, out: Path) -> None:
    """`python -m ab analyze` on the embedded files the gateways wrote."""
    store = settings.feature_store
    ab = settings.ab_testing
    config = out.parent / "ab-config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "feature_store": {
                    "backend": "embedded",
                    "embedded": {"event_log_path": str(store.embedded.event_log_path)},
                },
                "ab_testing": {
                    "experiments": [experiment.model_dump(mode="json")],
                    "exposure_log_path": str(ab.exposure_log_path),
                    "controller": {"state_file": str(ab.controller.state_file)},
                },
            }
        )
    )
    # 1-second periods: both traffic runs take seconds to a minute
    argv = ["analyze", "--config", str(config), "--experiment", experiment.name,
            "--out", str(out), "--period", "1s"]  # fmt: skip
    assert ab_main(argv) == 0


@pytest.mark.parametrize(
    ("behaviour", "decision", "routed_to", "backend"),
    [
        # Treatment clicks much less: the CTR guardrail breaks and the controller rolls back.
        (
            {"control": (0.30, 0.2), "treatment": (0.15, 0.2)},
            "rollback",
            "ranker_v2",
            "redis_postgres",
        ),
        # Treatment converts far better with the same clicks: it wins and is promoted.
        ({"control": (0.30, 0.10), "treatment": (0.30, 0.45)}, "promote", "ranker_v3", "embedded"),
    ],
    ids=["worse-rolled-back-postgres", "better-promoted-embedded"],
)
async def test_controller_decides_from_gateway_traffic(
    behaviour: dict[str, tuple[float, float]],
    decision: str,
    routed_to: str,
    backend: str,
    make_settings: Callable[..., Settings],
    start_tritonserver: Callable[..., TritonServer],
    models: Path,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    triton = start_tritonserver(models)
    experiment = _experiment(f"e2e_{decision}")
    stores: dict[str, str] = {}
    if backend == "redis_postgres":  # started only for this case
        redis: RedisServer = request.getfixturevalue("redis_server")
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        stores = {
            "FEATURE_STORE__BACKEND": "redis_postgres",
            "FEATURE_STORE__REDIS__URL": redis.url,
            "FEATURE_STORE__POSTGRES__DSN": postgres.dsn,
            "FEATURE_STORE__SPOOL_PATH": str(tmp_path / "spool.jsonl"),
        }
    base = make_settings(
        MODEL__REPOSITORY_DIR=str(models),
        MODEL__RANKER__TRITON_GRPC_URL=triton.grpc_url,
        MODEL__RANKER__TRITON_HTTP_URL=triton.http_url,
        MODEL__RANKER__TIMEOUT_MS="2000",
        SERVING__DEFAULT_DEADLINE_MS="5000",
        SERVING__RATE_LIMIT="",
        **stores,
    )
    settings = base.model_copy(
        update={
            "ab_testing": base.ab_testing.model_copy(
                update={
                    "experiments": (experiment,),
                    "controller": ControllerSettings(
                        routing_refresh_s=0.2, state_file=tmp_path / "experiment_state.json"
                    ),
                }
            )
        }
    )
    arms, served = await _traffic(settings, behaviour, seed=1)
    assert set(arms) == {f"{experiment.name}_control", f"{experiment.name}_treatment"}
    assert set(served) == {"ranker_v2", "ranker_v3"}  # both versions ranked on Triton

    assert await _decide(settings, experiment) == decision

    # Every new request now goes where the decision sent it, without a restart.
    arms_after, served_after = await _traffic(settings, behaviour, seed=2)
    winner = "control" if decision == "rollback" else "treatment"
    assert set(arms_after) == {f"{experiment.name}_{winner}"}
    assert set(served_after) == {routed_to}

    if backend == "embedded":
        out = tmp_path / "analysis"
        await asyncio.to_thread(_analyze, settings, experiment, out)
        document = json.loads((out / f"{experiment.name}.json").read_text())
        assert [d["decision"] for d in document["decisions"]] == [decision]
        users = document["variants"]
        # every Recommend of the first run exposed a new user; the second run all went to
        # the winner
        assert users["control"]["users"] + users["treatment"]["users"] == 2 * USERS
        assert users["control"]["users"] == arms[f"{experiment.name}_control"]
        conversion = next(e for e in document["effects"] if e["metric"] == "conversion_rate")
        assert conversion["ci"][0] > 0  # the better treatment's lift, interval above zero
        assert (out / f"{experiment.name}_lift.png").stat().st_size > 10_000
        if ANALYSIS_DIR:
            shutil.copytree(out, ANALYSIS_DIR, dirs_exist_ok=True)
