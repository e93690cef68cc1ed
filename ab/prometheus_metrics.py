"""Every Prometheus metric of the experiment sidecar, in its own registry.

The names match `infra/prometheus/rules/recsys-alerts.yaml` and the business dashboard:

- `recsys_experiment_decisions_total{experiment, decision}`: counter, created at 0 for every
  configured experiment and decision, so the first rollback is an `increase()` too;
- `recsys_experiment_guardrail_breached{experiment, metric}`: 1 while a guardrail is breached;
- `recsys_experiment_srm_p_value{experiment}`: the sample-ratio-mismatch p-value;
- `recsys_experiment_metric{experiment, variant, metric}`: current value per arm, metric in
  ctr | conversion_rate | revenue_per_user | average_order_value | discovery_share |
  discovery_click_share | discovery_purchase_share;
- `recsys_experiment_weight{experiment, variant}`: the traffic weight routing applies;
- `recsys_experiment_evaluations_total{result}`: evaluation rounds, ok or error;
- `recsys_experiment_controller_leader`: 1 while this sidecar holds the controller's leader
  lease and evaluates, 0 while it follows (`ab.leader`); the sum over sidecars is 1.

Labels come from the configuration only (experiment and variant names, fixed metric and
decision names). The registry is injectable so tests use a fresh one.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

from ab.config import ExperimentConfig

DECISIONS = ("rollback", "promote", "stop", "set_weights", "reweight")
"""Decision label values: controller decisions, operator weights, bandit re-weighting."""


class SidecarMetrics:
    """The sidecar's metrics, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "recsys_experiment_decisions",
            "Experiment decisions taken, by experiment and decision.",
            ["experiment", "decision"],
            registry=r,
        )
        self.guardrail_breached = Gauge(
            "recsys_experiment_guardrail_breached",
            "1 while a guardrail metric of an experiment is significantly degraded.",
            ["experiment", "metric"],
            registry=r,
        )
        self.srm_p_value = Gauge(
            "recsys_experiment_srm_p_value",
            "p-value of the sample-ratio-mismatch test of an experiment.",
            ["experiment"],
            registry=r,
        )
        self.metric = Gauge(
            "recsys_experiment_metric",
            "Current value of an experiment metric per variant.",
            ["experiment", "variant", "metric"],
            registry=r,
        )
        self.weight = Gauge(
            "recsys_experiment_weight",
            "Traffic weight of a variant as routing applies it.",
            ["experiment", "variant"],
            registry=r,
        )
        self.evaluations = Counter(
            "recsys_experiment_evaluations",
            "Controller evaluation rounds, by result (ok, error).",
            ["result"],
            registry=r,
        )
        for result in ("ok", "error"):
            self.evaluations.labels(result=result)
        self.leader = Gauge(
            "recsys_experiment_controller_leader",
            "1 while this sidecar holds the controller lease and evaluates experiments.",
            registry=r,
        )

    def initialise(self, experiments: Iterable[ExperimentConfig]) -> None:
        """Creates every experiment's decision counters at 0 and its guardrail gauges at 0."""
        for experiment in experiments:
            for decision in DECISIONS:
                self.decisions.labels(experiment=experiment.name, decision=decision)
            for guardrail in experiment.guardrails:
                self.guardrail_breached.labels(
                    experiment=experiment.name, metric=guardrail.metric
                ).set(0)
