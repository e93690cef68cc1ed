"""Operator actions on experiments: list, show, set weights, stop, roll back.

Every change goes through `ab.controller.apply_decision`, the code path of the controller's
own decisions: it writes `experiment_state` and an audit row (decision, reason, operator
evidence) together, and routing picks it up within seconds.
"""

from __future__ import annotations

import getpass
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ab.config import ExperimentConfig
from ab.controller import apply_decision
from ab.routing import apply_state
from ab.store import StateStore


class AdminError(ValueError):
    """An operator request that cannot be applied (unknown experiment or variant, bad weights)."""


def find_experiment(experiments: Sequence[ExperimentConfig], name: str) -> ExperimentConfig:
    """The configured experiment called `name`.

    Raises:
        AdminError: no such experiment.
    """
    for experiment in experiments:
        if experiment.name == name:
            return experiment
    known = ", ".join(e.name for e in experiments) or "none"
    raise AdminError(f"unknown experiment {name!r} (configured: {known})")


def parse_weights(experiment: ExperimentConfig, spec: Sequence[str]) -> dict[str, float]:
    """`["control=0.5", "treatment=0.5"]` -> weights for every variant, normalised to sum 1.

    Raises:
        AdminError: malformed entry, unknown variant, negative weight or all zero.
    """
    names = [v.name for v in experiment.variants]
    weights = dict.fromkeys(names, 0.0)
    for item in spec:
        name, sep, value = item.partition("=")
        if not sep:
            raise AdminError(f"weight {item!r}: expected VARIANT=WEIGHT")
        if name not in weights:
            raise AdminError(f"weight {item!r}: {experiment.name} has variants {names}")
        try:
            weight = float(value)
        except ValueError as exc:
            raise AdminError(f"weight {item!r}: not a number") from exc
        if not (math.isfinite(weight) and weight >= 0.0):
            raise AdminError(f"weight {item!r}: must be a non-negative number")
        weights[name] = weight
    total = math.fsum(weights.values())
    if total <= 0.0:
        raise AdminError("weights: at least one must be positive")
    return {k: v / total for k, v in weights.items()}


def _operator_evidence(reason: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {"source": "admin", "operator": user, "note": reason} | dict(extra or {})


async def list_experiments(
    experiments: Sequence[ExperimentConfig], store: StateStore
) -> list[dict[str, Any]]:
    """One row per configured experiment: status and the weights routing applies."""
    states = await store.load_states()
    rows = []
    for experiment in experiments:
        state = states.get(experiment.name)
        served = apply_state(experiment, state)
        rows.append(
            {
                "experiment": experiment.name,
                "policy": experiment.decision_policy,
                "status": state.status if state else "running",
                "enabled": served.enabled,
                "weights": {v.name: v.weight for v in served.variants},
                "updated_at": state.updated_at.isoformat() if state else None,
            }
        )
    return rows


async def show_experiment(experiment: ExperimentConfig, store: StateStore) -> dict[str, Any]:
    """The experiment's config, state and audit log."""
    states = await store.load_states()
    state = states.get(experiment.name)
    served = apply_state(experiment, state)
    return {
        "experiment": experiment.name,
        "config": experiment.model_dump(mode="json"),
        "status": state.status if state else "running",
        "enabled": served.enabled,
        "weights": {v.name: v.weight for v in served.variants},
        "decisions": [
            {
                "id": d.id,
                "decision": d.decision,
                "reason": d.reason,
                "decided_at": d.decided_at.isoformat(),
                "evidence": d.evidence,
            }
            for d in await store.decisions(experiment.name)
        ],
    }


async def set_weights(
    experiment: ExperimentConfig, store: StateStore, weights: Mapping[str, float], reason: str
) -> None:
    """Overrides the traffic split (state `running`); variants keep their bucket order."""
    await apply_decision(
        store,
        experiment.name,
        "set_weights",
        "running",
        weights,
        reason,
        _operator_evidence(reason, {"weights": dict(weights)}),
    )


async def stop(experiment: ExperimentConfig, store: StateStore, reason: str) -> None:
    """Disables the experiment: its users get the default model."""
    await apply_decision(
        store, experiment.name, "stop", "stopped", None, reason, _operator_evidence(reason)
    )


async def rollback(experiment: ExperimentConfig, store: StateStore, reason: str) -> None:
    """Sends all of the experiment's traffic to the control variant."""
    control = experiment.variants[0].name
    weights = {v.name: (1.0 if v.name == control else 0.0) for v in experiment.variants}
    await apply_decision(
        store,
        experiment.name,
        "rollback",
        "rolled_back",
        weights,
        reason,
        _operator_evidence(reason),
    )
