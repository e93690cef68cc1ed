"""The experiment controller: evaluates running experiments and decides, on a schedule.

For each enabled experiment without a final state, one evaluation (`evaluate`, a pure
function of the per-variant sums, so it is unit-testable) checks, in order:

1. Sample-ratio mismatch: users per arm against the configured weights (`ab.srm`);
   p < `srm_p_value` (0.001 by default) -> **rollback**. Skipped under the bandit policy,
   whose weights change on purpose, and while an operator's weights override is in force
   (the users then mix two splits).
2. Guardrails: for each treatment arm and guardrail metric, a one-sided test in the bad
   direction (`alternative="less"`: all four metrics are better when higher) on the relative
   effect at the experiment's alpha -- always-valid (`ab.sequential`) when decision_policy is
   `sequential`, Welch otherwise. Breached when significant *and* the estimated loss exceeds
   `max_relative_degradation` -> **rollback**.
3. Operational health (optional `HealthSource`): treatment error rate above `max_error_rate`
   or p99 latency above `max_latency_p99_ms` -> **rollback**.
4. Bandit policy: Thompson-sampling weights on conversion -> **reweight** (state stays
   `running` with the new weights) until the end; at the end the arm that is best with
   posterior probability >= 1 - alpha is promoted, else the experiment stops.
5. Primary metric, once every arm has the minimum sample (`min_users_per_variant`, else
   `ab.power.sample_size_mean` from the control arm's mean and per-user standard deviation at
   the configured mde / alpha / power): two-sided test per treatment (Holm-adjusted across
   treatments); the significant positive effect with the largest estimate -> **promote**.
6. Past `end` -> **stop**; otherwise **continue**.

A decision writes `experiment_state` (rollback: control 1.0, others 0.0; promote: winner
1.0; stop: disabled) and an audit row with the statistics as evidence (one transaction),
increments `recsys_experiment_decisions_total`, and logs one JSON line at WARNING so that
log-based alerting sees it. Gauges (SRM p-value, guardrails, metric values, weights) are set
on every evaluation. Admin commands go through the same `apply_decision`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeAlias

import numpy as np

from ab.bandit import thompson_weights
from ab.config import ExperimentConfig
from ab.health import HealthSource, VariantHealth
from ab.leader import LeaderLease
from ab.multitest import adjust_p_values
from ab.power import PowerInputError, sample_size_mean
from ab.prometheus_metrics import SidecarMetrics
from ab.srm import srm_test
from ab.statistics import AnalysisResult, StatisticsError, analyze
from ab.store import ExperimentState, LeaderLock, LeaseLostError, StateStore, Status
from ab.variant_sums import METRICS, MetricName, VariantSums

_log = logging.getLogger(__name__)

Decision: TypeAlias = Literal["continue", "rollback", "promote", "stop", "reweight"]
FINAL_STATUSES: frozenset[Status] = frozenset({"rolled_back", "promoted", "stopped"})


class SumsSource(Protocol):
    """Per-variant user-level sums of an experiment (`ab.variant_sums.ExperimentMetrics` on
    Postgres or the embedded SQLite files)."""

    async def variant_sums(self, experiment: ExperimentConfig) -> Mapping[str, VariantSums]:
        """Sums per variant name since the experiment's start."""
        ...


@dataclass(frozen=True, slots=True)
class MetricTest:
    """One treatment-versus-control test, JSON-ready."""

    metric: str
    variant: str
    alternative: str
    method: str
    effect: float
    ci: tuple[float, float]
    p_value: float
    control_value: float
    treatment_value: float
    control_n: int
    treatment_n: int
    chance_to_win: float
    """P(treatment's metric is higher), flat prior; descriptive, not a decision rule."""

    @classmethod
    def of(cls, metric: str, variant: str, result: AnalysisResult) -> MetricTest:
        """From an engine result."""
        e = result.estimate
        return cls(
            metric,
            variant,
            result.alternative,
            result.method,
            result.effect,
            result.ci,
            result.p_value,
            e.control_mean,
            e.treatment_mean,
            e.control_n,
            e.treatment_n,
            result.chance_to_win,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (infinite bounds become None)."""
        return {
            "metric": self.metric,
            "variant": self.variant,
            "alternative": self.alternative,
            "method": self.method,
            "relative_effect": self.effect,
            "ci": [b if math.isfinite(b) else None for b in self.ci],
            "p_value": self.p_value,
            "control_value": self.control_value,
            "treatment_value": self.treatment_value,
            "control_n": self.control_n,
            "treatment_n": self.treatment_n,
            "chance_to_win": self.chance_to_win,
        }


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The outcome of evaluating one experiment once."""

    experiment: str
    decision: Decision
    reason: str
    status: Status | None = None
    """The state to write (None for `continue`)."""
    weights: dict[str, float] | None = None
    """The weights override to write."""
    srm_p_value: float | None = None
    breached: tuple[str, ...] = ()
    """Guardrail metrics breached in some treatment arm."""
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    """Metric values per variant (for gauges)."""
    evidence: dict[str, Any] = field(default_factory=dict)
    """The statistics behind the decision, JSON-ready."""


def _method(experiment: ExperimentConfig) -> Literal["fixed", "sequential"]:
    return "sequential" if experiment.decision_policy == "sequential" else "fixed"


def compare_arms(
    experiment: ExperimentConfig,
    metric: MetricName,
    control: VariantSums,
    treatment: VariantSums,
    alternative: Literal["two-sided", "less", "greater"],
) -> MetricTest | None:
    """Relative effect of `treatment` over `control` on `metric` with the experiment's test
    (sequential or Welch) and alpha; None while the statistics cannot be tested yet."""
    c, t = control.stats(metric), treatment.stats(metric)
    if c is None or t is None:
        return None
    try:
        result = analyze(
            c,
            t,
            method=_method(experiment),
            difference="relative",
            alternative=alternative,
            alpha=experiment.alpha,
        )
    except (StatisticsError, ZeroDivisionError):
        return None  # no variance yet, or a zero control mean: nothing to conclude
    if not (math.isfinite(result.effect) and math.isfinite(result.p_value)):
        return None
    return MetricTest.of(metric, treatment.variant, result)


def required_users(experiment: ExperimentConfig, control: VariantSums) -> int | None:
    """Users per arm before the primary metric may promote; None while not computable."""
    if experiment.min_users_per_variant is not None:
        return experiment.min_users_per_variant
    stats = control.stats(experiment.primary_metric)
    if stats is None or stats.variance <= 0.0 or stats.mean == 0.0:
        return None
    try:
        return sample_size_mean(
            stats.mean,
            math.sqrt(stats.variance),
            experiment.minimum_detectable_effect,
            alpha=experiment.alpha,
            power=experiment.power,
        ).users_per_variant
    except PowerInputError:
        return None


def _empty(variant: str) -> VariantSums:
    return VariantSums(variant, 0, *([0.0] * 13))  # the new-item sums default to 0


@dataclass(slots=True)
class _Round:
    """What the rules of one evaluation read, and what earlier rules found for later ones."""

    experiment: ExperimentConfig
    arms: list[str]
    per_arm: dict[str, VariantSums]
    now: datetime
    health: Mapping[str, VariantHealth] | None
    rng: np.random.Generator | None
    weights_overridden: bool
    evidence: dict[str, Any]
    srm_p: float | None = None
    needed: int | None = None
    """Users per arm the primary metric needs (set by `_primary_metric`)."""
    ready: bool = False
    """Every arm has `needed` users."""

    @property
    def control(self) -> VariantSums:
        return self.per_arm[self.arms[0]]

    @property
    def treatments(self) -> list[VariantSums]:
        return [self.per_arm[a] for a in self.arms[1:]]

    @property
    def ended(self) -> bool:
        end = self.experiment.end
        return end is not None and self.now >= end

    def rollback(self, reason: str, breached: tuple[str, ...] = ()) -> _Verdict:
        weights = {a: (1.0 if a == self.arms[0] else 0.0) for a in self.arms}
        return _Verdict("rollback", reason, "rolled_back", weights, breached)

    def promote(self, winner: str, reason: str) -> _Verdict:
        weights = {a: (1.0 if a == winner else 0.0) for a in self.arms}
        return _Verdict("promote", reason, "promoted", weights)


@dataclass(frozen=True, slots=True)
class _Verdict:
    """A rule's decision."""

    decision: Decision
    reason: str
    status: Status | None
    weights: dict[str, float] | None
    breached: tuple[str, ...] = ()


def _sample_ratio(r: _Round) -> _Verdict | None:
    """1. Sample-ratio mismatch against the configured weights -> rollback."""
    experiment = r.experiment
    if r.weights_overridden:
        r.evidence["srm"] = {"skipped": "weights overridden while running"}
        return None
    if experiment.decision_policy == "bandit":
        return None
    observed = [r.per_arm[a].users for a in r.arms]
    weights = [v.weight for v in experiment.variants]
    if sum(observed) == 0 or not all(w > 0 for w in weights):
        return None
    srm = srm_test(observed, weights)
    r.srm_p = srm.p_value
    r.evidence["srm"] = {
        "observed": list(srm.observed),
        "expected": list(srm.expected),
        "statistic": srm.statistic,
        "p_value": srm.p_value,
        "threshold": experiment.srm_p_value,
    }
    if srm.p_value >= experiment.srm_p_value:
        return None
    return r.rollback(
        f"sample-ratio mismatch: p = {srm.p_value:.3g} < {experiment.srm_p_value:g}"
        f" (users {dict(zip(r.arms, observed, strict=True))})"
    )


def _guardrails(r: _Round) -> _Verdict | None:
    """2. A guardrail metric significantly worse beyond its tolerance in a treatment ->
    rollback."""
    experiment = r.experiment
    tests: list[dict[str, Any]] = []
    breached: list[str] = []
    reasons: list[str] = []
    for guardrail in experiment.guardrails:
        for treatment in r.treatments:
            test = compare_arms(experiment, guardrail.metric, r.control, treatment, "less")
            if test is None:
                continue
            hit = (
                test.p_value < experiment.alpha
                and test.effect < -guardrail.max_relative_degradation
            )
            tests.append(
                test.as_dict()
                | {"max_relative_degradation": guardrail.max_relative_degradation}
                | {"breached": hit}
            )
            if hit:
                if guardrail.metric not in breached:
                    breached.append(guardrail.metric)
                reasons.append(
                    f"{guardrail.metric} of {treatment.variant} {test.effect:+.2%}"
                    f" (p = {test.p_value:.3g})"
                )
    r.evidence["guardrails"] = tests
    if not breached:
        return None
    return r.rollback("guardrail breached: " + "; ".join(reasons), tuple(breached))


def _operational_health(r: _Round) -> _Verdict | None:
    """3. A treatment's error rate or p99 latency above its limit -> rollback."""
    if not r.health:
        return None
    experiment = r.experiment
    problems = []
    for treatment in r.treatments:
        h = r.health.get(treatment.variant)
        if h is None:
            continue
        if (
            experiment.max_error_rate is not None
            and h.error_rate is not None
            and h.error_rate > experiment.max_error_rate
        ):
            problems.append(f"{treatment.variant} error rate {h.error_rate:.2%}")
        if (
            experiment.max_latency_p99_ms is not None
            and h.latency_p99_s is not None
            and h.latency_p99_s * 1000.0 > experiment.max_latency_p99_ms
        ):
            problems.append(f"{treatment.variant} p99 {h.latency_p99_s * 1000:.0f} ms")
    r.evidence["health"] = {
        name: {"error_rate": h.error_rate, "latency_p99_s": h.latency_p99_s}
        for name, h in r.health.items()
    }
    if not problems:
        return None
    return r.rollback("operational guardrail breached: " + "; ".join(problems))


def _bandit(r: _Round) -> _Verdict | None:
    """4. Bandit policy: Thompson-sampling weights -> reweight; at the end, promote the arm
    best with probability >= 1 - alpha, else stop."""
    experiment = r.experiment
    if experiment.decision_policy != "bandit":
        return None
    weights = thompson_weights(
        {a: r.per_arm[a].purchases for a in r.arms},
        {a: r.per_arm[a].clicks for a in r.arms},
        r.arms,
        rng=r.rng if r.rng is not None else np.random.default_rng(),
        min_weight=0.0 if r.ended else experiment.bandit_min_weight,
    )
    r.evidence["bandit"] = {"weights": weights}
    if not r.ended:
        return _Verdict(
            "reweight",
            "Thompson sampling on conversion_rate: "
            + ", ".join(f"{a} {w:.3f}" for a, w in weights.items()),
            "running",
            weights,
        )
    best = max(r.arms, key=lambda a: weights[a])
    if weights[best] >= 1.0 - experiment.alpha:
        return r.promote(best, f"bandit ended: {best} is best with probability {weights[best]:.3f}")
    return _Verdict("stop", "bandit ended without a clear winner", "stopped", None)


def _primary_metric(r: _Round) -> _Verdict | None:
    """5. Once every arm has the minimum sample, the significant (Holm-adjusted) positive
    effect with the largest estimate -> promote."""
    experiment = r.experiment
    r.needed = required_users(experiment, r.control)
    r.evidence["min_users_per_variant"] = r.needed
    r.ready = r.needed is not None and all(r.per_arm[a].users >= r.needed for a in r.arms)
    if not r.ready:
        return None
    tests = [
        t
        for treatment in r.treatments
        if (
            t := compare_arms(
                experiment, experiment.primary_metric, r.control, treatment, "two-sided"
            )
        )
        is not None
    ]
    adjusted = adjust_p_values([t.p_value for t in tests], "holm")
    r.evidence["primary"] = [
        t.as_dict() | {"p_value_adjusted": q} for t, q in zip(tests, adjusted, strict=True)
    ]
    winners = [
        t for t, q in zip(tests, adjusted, strict=True) if q < experiment.alpha and t.effect > 0
    ]
    if not winners:
        return None
    best = max(winners, key=lambda t: t.effect)
    return r.promote(
        best.variant,
        f"{experiment.primary_metric} of {best.variant} {best.effect:+.2%}"
        f" (p = {best.p_value:.3g}) with >= {r.needed} users per arm",
    )


def _end(r: _Round) -> _Verdict | None:
    """6. Past `end` -> stop."""
    if not r.ended:
        return None
    return _Verdict(
        "stop", f"ended at {r.experiment.end} without a significant winner", "stopped", None
    )


_RULES: tuple[Callable[[_Round], _Verdict | None], ...] = (
    _sample_ratio,
    _guardrails,
    _operational_health,
    _bandit,
    _primary_metric,
    _end,
)
"""The decision rules in order; the first verdict wins (see the module docstring)."""


def _keep_running(r: _Round) -> _Verdict:
    if r.ready:
        progress = ""
    elif r.needed is None:
        progress = "; minimum sample not computable yet"
    else:
        progress = f"; waiting for {r.needed} users per arm"
    return _Verdict("continue", "no significant result" + progress, None, None)


def evaluate(
    experiment: ExperimentConfig,
    sums: Mapping[str, VariantSums],
    now: datetime,
    *,
    health: Mapping[str, VariantHealth] | None = None,
    rng: np.random.Generator | None = None,
    weights_overridden: bool = False,
) -> Evaluation:
    """Decides what to do with one running experiment: the first of `_RULES` that decides,
    else continue; see the module docstring.

    `weights_overridden`: an operator changed the split while running, so the users per arm
    mix two splits and the SRM test against the configured weights is skipped.
    """
    arms = [v.name for v in experiment.variants]
    per_arm = {a: sums.get(a) or _empty(a) for a in arms}
    values: dict[str, dict[str, float]] = {
        a: {str(m): v for m in METRICS if (v := per_arm[a].value(m)) is not None} for a in arms
    }
    evidence: dict[str, Any] = {
        "policy": experiment.decision_policy,
        "alpha": experiment.alpha,
        "variants": {a: per_arm[a].as_dict() for a in arms},
        "values": values,
    }
    r = _Round(experiment, arms, per_arm, now, health, rng, weights_overridden, evidence)
    verdict = next(
        (found for rule in _RULES if (found := rule(r)) is not None), None
    ) or _keep_running(r)
    return Evaluation(
        experiment.name,
        verdict.decision,
        verdict.reason,
        verdict.status,
        verdict.weights,
        r.srm_p,
        verdict.breached,
        values=values,
        evidence=evidence,
    )


async def apply_decision(
    store: StateStore,
    experiment: str,
    decision: str,
    status: Status,
    weights: Mapping[str, float] | None,
    reason: str,
    evidence: Mapping[str, Any],
    metrics: SidecarMetrics | None = None,
    now: datetime | None = None,
    leader: LeaderLock | None = None,
) -> None:
    """Writes the state and its audit row, counts the decision and logs it as JSON; with
    `leader`, only while that lease lock is held (`ab.store.LeaseLostError` otherwise)."""
    state = ExperimentState(
        experiment=experiment,
        status=status,
        weights=None if weights is None else dict(weights),
        updated_at=now or datetime.now(UTC),
    )
    record = await store.record_decision(state, decision, reason, evidence, leader=leader)
    if metrics is not None:
        metrics.decisions.labels(experiment=experiment, decision=decision).inc()
    _log.warning(
        json.dumps(
            {
                "event": "experiment_decision",
                "experiment": experiment,
                "decision": decision,
                "status": status,
                "weights": state.weights,
                "reason": reason,
                "audit_id": record.id,
            },
            sort_keys=True,
        )
    )


def export_gauges(
    metrics: SidecarMetrics, experiment: ExperimentConfig, evaluation: Evaluation
) -> None:
    """Sets the SRM, guardrail and metric gauges from an evaluation."""
    if evaluation.srm_p_value is not None:
        metrics.srm_p_value.labels(experiment=experiment.name).set(evaluation.srm_p_value)
    for guardrail in experiment.guardrails:
        metrics.guardrail_breached.labels(experiment=experiment.name, metric=guardrail.metric).set(
            1 if guardrail.metric in evaluation.breached else 0
        )
    for variant, values in evaluation.values.items():
        for metric, value in values.items():
            metrics.metric.labels(experiment=experiment.name, variant=variant, metric=metric).set(
                value
            )


def _same_weights(evaluation: Evaluation, state: ExperimentState | None) -> bool:
    if evaluation.decision != "reweight" or state is None or state.weights is None:
        return False
    new = evaluation.weights or {}
    return set(new) == set(state.weights) and all(
        abs(new[k] - state.weights[k]) <= 0.01 for k in new
    )


class Controller:
    """Evaluates every enabled, undecided experiment; `run` repeats it every `interval_s`.

    Args:
        experiments: the configured experiments.
        sums: where per-variant sums come from.
        store: where decisions go (and the current states are read).
        metrics: the sidecar's metrics.
        health: optional operational health per arm.
        clock: the current time (tests move it past `end`).
        rng: random generator for the bandit.
    """

    def __init__(
        self,
        experiments: Sequence[ExperimentConfig],
        sums: SumsSource,
        store: StateStore,
        metrics: SidecarMetrics,
        *,
        health: HealthSource | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: np.random.Generator | None = None,
    ) -> None:
        self._experiments = tuple(experiments)
        self._sums = sums
        self._store = store
        self._metrics = metrics
        self._health = health
        self._clock = clock
        self._rng = rng if rng is not None else np.random.default_rng()
        self._lease: LeaderLease | None = None
        metrics.initialise(self._experiments)

    async def evaluate_experiment(
        self, experiment: ExperimentConfig, state: ExperimentState | None = None
    ) -> Evaluation:
        """Evaluates one experiment, applies the decision and exports gauges.

        A bandit re-weighting that moves no weight by more than 0.01 from `state` (the
        current state) is not written, so the audit log only records real changes.
        """
        sums = await self._sums.variant_sums(experiment)
        health: Mapping[str, VariantHealth] | None = None
        if self._health is not None and (
            experiment.max_error_rate is not None or experiment.max_latency_p99_ms is not None
        ):
            try:
                health = await self._health.health(experiment)
            except Exception:  # health is optional input: an outage must not stop decisions
                _log.warning("health of %s unavailable", experiment.name, exc_info=True)
        now = self._clock()
        evaluation = evaluate(
            experiment,
            sums,
            now,
            health=health,
            rng=self._rng,
            weights_overridden=state is not None and state.weights is not None,
        )
        export_gauges(self._metrics, experiment, evaluation)
        if evaluation.status is not None and not _same_weights(evaluation, state):
            if self._lease is not None and not await self._lease.hold():
                # The lease went while evaluating: the new leader decides, once.
                _log.warning("leader lease lost; %s left to the new leader", experiment.name)
                return evaluation
            try:
                await apply_decision(
                    self._store,
                    experiment.name,
                    evaluation.decision,
                    evaluation.status,
                    evaluation.weights,
                    evaluation.reason,
                    evaluation.evidence,
                    self._metrics,
                    now,
                    self._lease.lock if self._lease is not None else None,
                )
            except LeaseLostError:
                # Lost between the check above and the write: nothing was written.
                _log.warning("leader lease lost; %s left to the new leader", experiment.name)
                return evaluation
        weights = evaluation.weights or {v.name: v.weight for v in experiment.variants}
        for variant, weight in weights.items():
            self._metrics.weight.labels(experiment=experiment.name, variant=variant).set(weight)
        return evaluation

    async def run_once(self) -> list[Evaluation]:
        """Evaluates every experiment that is enabled and not decided yet.

        One experiment's failure (logged, counted as an error round) does not stop the others.
        """
        states = await self._store.load_states()
        out: list[Evaluation] = []
        failed = False
        for experiment in self._experiments:
            state = states.get(experiment.name)
            if not experiment.enabled or (state is not None and state.status in FINAL_STATUSES):
                continue
            try:
                out.append(await self.evaluate_experiment(experiment, state))
            except Exception:  # keep evaluating the others; the next round retries
                failed = True
                _log.exception("evaluating experiment %s failed", experiment.name)
        self._metrics.evaluations.labels(result="error" if failed else "ok").inc()
        return out

    async def run(
        self, stop: asyncio.Event, interval_s: float, lease: LeaderLease | None = None
    ) -> None:
        """Evaluates every `interval_s` until `stop` is set; with a `lease`, only in rounds
        where this process holds it (the others wait, see `ab.leader`), checked again just
        before a decision is written."""
        self._lease = lease
        while not stop.is_set():
            leading = lease is None or await lease.hold()
            self._metrics.leader.set(1 if leading else 0)
            try:
                if leading:
                    await self.run_once()
            except Exception:  # e.g. Postgres down: log, count and try again next round
                self._metrics.evaluations.labels(result="error").inc()
                _log.exception("evaluation round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
