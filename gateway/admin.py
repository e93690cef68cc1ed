"""`recsys.v1.ExperimentAdminService`: operator actions on experiments over gRPC.

The same audited code path as `python -m ab experiments ...` and the controller
(`ab.admin` -> `ab.controller.apply_decision`); changes reach every gateway through the routing
poller within seconds. Protected by the bearer token like RecordEvents
(`gateway.security.PROTECTED_METHODS`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc
from recsys.v1 import admin_pb2 as pb
from recsys.v1 import admin_pb2_grpc as pb_grpc

from ab import admin
from ab.config import ExperimentConfig
from ab.store import ExperimentStoreError, StateStore
from gateway.errors import InvalidArgument, NotFound, Unavailable

Context = grpc.aio.ServicerContext[Any, Any]


def _status(row: dict[str, Any]) -> pb.ExperimentStatus:
    return pb.ExperimentStatus(
        name=row["experiment"],
        status=row["status"],
        enabled=row["enabled"],
        weights=row["weights"],
        decisions_json=[json.dumps(d, default=str) for d in row.get("decisions", [])],
    )


class ExperimentAdminServicer(pb_grpc.ExperimentAdminServiceServicer):
    """Lists, shows and changes the configured experiments."""

    def __init__(self, experiments: Sequence[ExperimentConfig], store: StateStore) -> None:
        self._experiments = tuple(experiments)
        self._store = store

    def _find(self, name: str) -> ExperimentConfig:
        if not name:
            raise InvalidArgument("name", "is required")
        try:
            return admin.find_experiment(self._experiments, name)
        except admin.AdminError as exc:
            raise NotFound(str(exc)) from exc

    @staticmethod
    def _reason(reason: str) -> str:
        if not reason.strip():
            raise InvalidArgument("reason", "is required (it goes to the audit log)")
        if len(reason) > 500:
            raise InvalidArgument("reason", "is longer than 500 characters")
        return reason

    async def _show(self, experiment: ExperimentConfig) -> pb.ExperimentStatus:
        try:
            return _status(await admin.show_experiment(experiment, self._store))
        except ExperimentStoreError as exc:
            raise Unavailable(f"experiment state unavailable: {exc}") from exc

    async def ListExperiments(
        self, request: pb.ListExperimentsRequest, context: Context
    ) -> pb.ListExperimentsResponse:
        try:
            rows = await admin.list_experiments(self._experiments, self._store)
        except ExperimentStoreError as exc:
            raise Unavailable(f"experiment state unavailable: {exc}") from exc
        return pb.ListExperimentsResponse(experiments=[_status(r) for r in rows])

    async def GetExperiment(
        self, request: pb.ExperimentRequest, context: Context
    ) -> pb.ExperimentStatus:
        return await self._show(self._find(request.name))

    async def SetWeights(
        self, request: pb.SetWeightsRequest, context: Context
    ) -> pb.ExperimentStatus:
        experiment = self._find(request.name)
        reason = self._reason(request.reason)
        spec = [f"{name}={weight!r}" for name, weight in request.weights.items()]
        try:
            weights = admin.parse_weights(experiment, spec)
        except admin.AdminError as exc:
            raise InvalidArgument("weights", str(exc)) from exc
        await self._apply(admin.set_weights(experiment, self._store, weights, reason))
        return await self._show(experiment)

    async def StopExperiment(
        self, request: pb.ExperimentActionRequest, context: Context
    ) -> pb.ExperimentStatus:
        experiment = self._find(request.name)
        await self._apply(admin.stop(experiment, self._store, self._reason(request.reason)))
        return await self._show(experiment)

    async def RollbackExperiment(
        self, request: pb.ExperimentActionRequest, context: Context
    ) -> pb.ExperimentStatus:
        experiment = self._find(request.name)
        await self._apply(admin.rollback(experiment, self._store, self._reason(request.reason)))
        return await self._show(experiment)

    @staticmethod
    async def _apply(change: Any) -> None:
        try:
            await change
        except ExperimentStoreError as exc:
            raise Unavailable(f"experiment state unavailable: {exc}") from exc
