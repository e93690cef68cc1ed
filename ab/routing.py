"""Routing for the gateways: the configured experiments with the current decisions applied.

The gateway's assign stage calls `RoutingTable.arms(user_id)` in process (no I/O). A
`RoutingPoller` task refreshes the table from a `StateSource` every few seconds (2 by
default), so a rollback or promotion written by the sidecar or an operator takes effect in
every gateway process within seconds, without restarts:

==============  =======================================================================
state status    effect on routing
==============  =======================================================================
(no state)      the experiment as configured
running         the configured experiment; `weights`, when set (bandit, operator), replace
                the configured weights
rolled_back     `weights` override: control 1.0, the others 0.0
promoted        `weights` override: the winner 1.0, the others 0.0
stopped         experiment disabled: its users get the default model
==============  =======================================================================

Layers: experiments of different layers (`ExperimentConfig.layer`) overlap, so `arms` gives
every arm a user is in, one per layer at most (`ab.assignment.assign_layers`); the arms
together decide the model (the arm that names one) and whether the requested surface is
served (every arm must allow it). The configuration forbids two layers deciding one thing.

Assignment stays deterministic: an override only changes weights, and `ab.assignment` keeps
its bucket layout (variants in config order, same salt), so only the users whose bucket
changes owner move.

Bandit (decision_policy: bandit): the controller writes Thompson-sampling weights as a
`running` state; routing applies them like any override, so the weights change the traffic
split. Each assignment carries the probability with which its arm was chosen (the arm's
weight times the coverage); the gateway logs it in `Exposure.assignment_probability`, which
makes the exposures usable for off-policy (inverse-propensity) evaluation. Hash splits with
fixed weights log 1.0 (the arm is a deterministic function of the user).

If a refresh fails (Postgres down, unreadable file), the table keeps its last state and the
failure is logged and counted: routing degrades to "last known decisions", never to an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ab.assignment import Assignment, assign, assign_layers
from ab.config import ExperimentConfig
from ab.store import ExperimentState

_log = logging.getLogger(__name__)


class StateSource(Protocol):
    """Where routing reads experiment state (`PostgresStateStore`, `JsonStateStore`)."""

    async def load_states(self) -> dict[str, ExperimentState]:
        """The current state of every experiment that has one."""
        ...


@dataclass(frozen=True, slots=True)
class RoutedAssignment:
    """An assignment with the probability that its arm was chosen for this user."""

    assignment: Assignment
    probability: float
    """For `Exposure.assignment_probability`: 1.0 for fixed hash splits, the arm's share of
    traffic (weight * coverage) under a bandit."""


@dataclass(frozen=True, slots=True)
class UserArms:
    """Every experiment arm one user is in (at most one per layer, config order) and what they
    decide together. Never empty."""

    arms: tuple[RoutedAssignment, ...]

    @property
    def primary(self) -> Assignment:
        """The arm that decides the ranking model (its `model` and `model_version`), else the
        first arm; the response's `experiment_id` names it."""
        return next(
            (a.assignment for a in self.arms if a.assignment.model), self.arms[0].assignment
        )

    @property
    def serve_surface(self) -> bool:
        """Whether the surface the request asks for is served (no arm forces the ranker's
        list)."""
        return all(a.assignment.serve_surface for a in self.arms)


def apply_state(experiment: ExperimentConfig, state: ExperimentState | None) -> ExperimentConfig:
    """The experiment as routing serves it under `state`.

    Weights overriding the configured ones are normalised to sum to 1; names the experiment
    lacks are ignored and missing variants get 0. An override whose weights sum to 0 is
    ignored (logged), keeping the configured split.
    """
    if state is None:
        return experiment
    if state.status == "stopped":
        return experiment.model_copy(update={"enabled": False})
    if state.weights is None:
        return experiment
    raw = [max(float(state.weights.get(v.name, 0.0)), 0.0) for v in experiment.variants]
    total = math.fsum(w for w in raw if math.isfinite(w))
    if not total > 0.0 or not all(math.isfinite(w) for w in raw):
        _log.warning("ignoring weights override %r of %s", state.weights, experiment.name)
        return experiment
    variants = tuple(
        v.model_copy(update={"weight": w / total})
        for v, w in zip(experiment.variants, raw, strict=True)
    )
    return experiment.model_copy(update={"variants": variants})


class RoutingTable:
    """The experiments as served now; `assign` is pure CPU and safe to call per request.

    `update` swaps the whole effective tuple at once, so a concurrent `assign` sees either the
    old decisions or the new ones.
    """

    def __init__(
        self,
        experiments: Sequence[ExperimentConfig],
        states: Mapping[str, ExperimentState] | None = None,
    ) -> None:
        self._configured = tuple(experiments)
        self._states: dict[str, ExperimentState] = {}
        self._effective = self._configured
        self.update(states or {})

    @property
    def experiments(self) -> tuple[ExperimentConfig, ...]:
        """The experiments with the current overrides applied, in config order."""
        return self._effective

    @property
    def states(self) -> Mapping[str, ExperimentState]:
        """The states last applied."""
        return self._states

    def update(self, states: Mapping[str, ExperimentState]) -> bool:
        """Applies new states; returns whether anything changed."""
        effective = tuple(apply_state(e, states.get(e.name)) for e in self._configured)
        changed = effective != self._effective
        self._states = dict(states)
        self._effective = effective
        return changed

    def experiment(self, name: str) -> ExperimentConfig | None:
        """One experiment as served now."""
        return next((e for e in self._effective if e.name == name), None)

    def assign(self, user_id: str) -> RoutedAssignment | None:
        """The first experiment (config order) that includes the user, with its propensity: one
        layer's view, for tools and tests (the gateway asks `arms`, every layer at once)."""
        for experiment in self._effective:
            found = assign(experiment, user_id)
            if found is not None:
                return RoutedAssignment(found, self._probability(experiment, found.variant))
        return None

    def arms(self, user_id: str) -> UserArms | None:
        """Every arm the user is in, one per layer at most; None when they are in none."""
        found = assign_layers(self._effective, user_id)
        if not found:
            return None
        by_name = {e.name: e for e in self._effective}
        return UserArms(
            tuple(
                RoutedAssignment(a, self._probability(by_name[a.experiment], a.variant))
                for a in found
            )
        )

    @staticmethod
    def _probability(experiment: ExperimentConfig, variant: str) -> float:
        if experiment.decision_policy != "bandit":
            return 1.0
        weight = next(v.weight for v in experiment.variants if v.name == variant)
        return min(max(weight * experiment.coverage, 1e-9), 1.0)


class RoutingPoller:
    """Refreshes a `RoutingTable` from a `StateSource` every `interval_s`. Use `async with`
    (the first refresh happens before the body runs, so a gateway starts with the current
    decisions when the source answers)."""

    def __init__(self, table: RoutingTable, source: StateSource, interval_s: float = 2.0) -> None:
        self.table = table
        self._source = source
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.refreshes = 0
        """Successful refreshes."""
        self.failures = 0
        """Failed refreshes (the table kept its previous state)."""

    async def refresh(self) -> bool:
        """Reads the states once and applies them; False when the read failed."""
        try:
            states = await self._source.load_states()
        except Exception:  # any source failure: keep serving the last known decisions
            self.failures += 1
            _log.warning("experiment state refresh failed; keeping the last state", exc_info=True)
            return False
        if self.table.update(states):
            _log.info(
                "routing updated: %s",
                {name: s.status for name, s in sorted(states.items())},
            )
        self.refreshes += 1
        return True

    async def __aenter__(self) -> RoutingPoller:
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="routing-poller")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.refresh()
