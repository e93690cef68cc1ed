"""The experiment admin API through a real channel: list/get, set weights, stop, roll back,
authentication, validation, and the effect on routing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import cast

import grpc
import pytest
from recsys.v1 import admin_pb2 as pb
from recsys.v1 import admin_pb2_grpc as pb_grpc
from recsys.v1 import recommendation_pb2 as rec

from gateway.config import Settings
from tests.conftest import async_stub, running_gateway

pytestmark = pytest.mark.integration
NAME = "ranker_v2_vs_v3"
TOKEN = (("authorization", "Bearer admin-secret"),)


def _stub(channel: grpc.aio.Channel) -> pb_grpc.ExperimentAdminServiceAsyncStub:
    return cast(
        "pb_grpc.ExperimentAdminServiceAsyncStub", pb_grpc.ExperimentAdminServiceStub(channel)
    )


@pytest.fixture
def settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    return make_settings(
        SERVING__AUTH__TOKEN="admin-secret",
        AB_TESTING__CONTROLLER__STATE_FILE=str(tmp_path / "state.json"),
        AB_TESTING__CONTROLLER__ROUTING_REFRESH_S="0.2",
    )


async def test_list_get_set_weights_and_rollback(settings: Settings) -> None:
    async with running_gateway(settings) as (_, channel):
        admin = _stub(channel)
        listed = await admin.ListExperiments(pb.ListExperimentsRequest(), metadata=TOKEN, timeout=5)
        by_name = {e.name: e for e in listed.experiments}
        assert set(by_name) == {NAME, "mixed_vs_buy_again"}  # the shipped profile's two layers
        experiment = by_name[NAME]
        assert (experiment.name, experiment.status) == (NAME, "running")
        assert dict(experiment.weights) == pytest.approx({"control": 0.9, "treatment": 0.1})

        ramped = await admin.SetWeights(
            pb.SetWeightsRequest(
                name=NAME, weights={"control": 1, "treatment": 1}, reason="ramp to 50%"
            ),
            metadata=TOKEN,
            timeout=5,
        )
        assert dict(ramped.weights) == pytest.approx({"control": 0.5, "treatment": 0.5})

        rolled = await admin.RollbackExperiment(
            pb.ExperimentActionRequest(name=NAME, reason="guardrail"), metadata=TOKEN, timeout=5
        )
        assert rolled.status == "rolled_back"
        assert dict(rolled.weights) == {"control": 1.0, "treatment": 0.0}
        decisions = [json.loads(d)["decision"] for d in rolled.decisions_json]
        assert decisions == ["set_weights", "rollback"]

        await asyncio.sleep(1.0)  # routing refreshes every 0.2 s
        stub = async_stub(channel)
        arms = {
            (
                await stub.Recommend(rec.RecommendRequest(user_id=str(12347 + i)), timeout=5)
            ).experiment_id
            for i in range(40)
        }
        assert arms == {f"{NAME}_control"}

        stopped = await admin.StopExperiment(
            pb.ExperimentActionRequest(name=NAME, reason="done"), metadata=TOKEN, timeout=5
        )
        assert (stopped.status, stopped.enabled) == ("stopped", False)


async def _refused(admin: pb_grpc.ExperimentAdminServiceAsyncStub, call: str) -> object:
    if call == "no-token":
        return await admin.ListExperiments(pb.ListExperimentsRequest(), timeout=5)
    if call == "unknown":
        return await admin.GetExperiment(
            pb.ExperimentRequest(name="nope"), metadata=TOKEN, timeout=5
        )
    if call == "no-reason":
        return await admin.StopExperiment(
            pb.ExperimentActionRequest(name=NAME), metadata=TOKEN, timeout=5
        )
    weights = {"control": 1.0, "other": 1.0} if call == "bad-variant" else {"control": -1.0}
    return await admin.SetWeights(
        pb.SetWeightsRequest(name=NAME, weights=weights, reason="x"), metadata=TOKEN, timeout=5
    )


@pytest.mark.parametrize(
    ("call", "code", "details"),
    [
        ("no-token", grpc.StatusCode.UNAUTHENTICATED, "missing or invalid token"),
        ("unknown", grpc.StatusCode.NOT_FOUND, "nope"),
        ("no-reason", grpc.StatusCode.INVALID_ARGUMENT, "reason: is required"),
        ("bad-variant", grpc.StatusCode.INVALID_ARGUMENT, "weights:"),
        ("negative", grpc.StatusCode.INVALID_ARGUMENT, "weights:"),
    ],
)
async def test_refusals(settings: Settings, call: str, code: grpc.StatusCode, details: str) -> None:
    async with running_gateway(settings) as (_, channel):
        admin = _stub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _refused(admin, call)
        assert caught.value.code() == code
        assert details in (caught.value.details() or "")
