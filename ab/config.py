"""Typed settings of the `ab_testing` section: the experiments and how they are decided."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VariantConfig(BaseModel):
    """One arm of an experiment and the model it serves."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")
    """Arm name, e.g. `control` or `treatment`."""
    model: str | None = Field(None, min_length=1)
    """Triton ensemble this arm ranks with, e.g. `ranker_v3`; None leaves the model to the
    user's arm in another layer (or the default model): an experiment on something else."""
    model_version: int = Field(0, ge=0)
    """Model version; 0 means the latest version Triton serves."""
    weight: float = Field(ge=0.0, le=1.0)
    """Share of the experiment's traffic; the weights of one experiment sum to 1."""
    serve_surface: bool = True
    """Serve the list the request asks for (`RecommendRequest.surface`, MIXED when unset);
    false serves the ranker's list (BUY_AGAIN) instead of MIXED: the default list before
    surfaces, the control arm of an experiment on it. A list asked for by name (DISCOVER,
    BUY_AGAIN) is served either way."""


MetricName: TypeAlias = Literal[
    "ctr",
    "conversion_rate",
    "revenue_per_user",
    "average_order_value",
    "discovery_share",
    "discovery_click_share",
    "discovery_purchase_share",
]
"""The experiment metrics `ab.variant_sums` computes (defined there)."""


class GuardrailConfig(BaseModel):
    """A metric that must not get significantly worse in any treatment arm."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    metric: MetricName
    """Metric watched."""
    max_relative_degradation: float = Field(0.05, gt=0.0, lt=1.0)
    """Tolerated relative loss before the experiment is rolled back."""


class ExperimentConfig(BaseModel):
    """One experiment: its arms, traffic and statistical plan."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")
    """Experiment id, e.g. `ranker_v2_vs_v3`; appears in responses as `<name>_<variant>`."""
    salt: str = Field(min_length=1)
    """Hash salt: a new salt reshuffles users, so never change it while running."""
    layer: str = Field("main", min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")
    """Experiments of one layer share its users (a user is in the first one, config order,
    that covers them); experiments of different layers overlap, each split by its own salt,
    so a user is in at most one experiment per layer. Two layers must not decide the same
    thing (the ranking model, the surface served)."""
    enabled: bool = True
    """Whether users are assigned at all."""
    coverage: float = Field(1.0, gt=0.0, le=1.0)
    """Share of all users in the experiment (users outside get the default model)."""
    variants: tuple[VariantConfig, ...] = Field(min_length=2)
    """Arms; the first is the control."""
    start: datetime | None = None
    """Planned start (informational; assignment starts when enabled)."""
    end: datetime | None = None
    """Planned end: the controller decides at the latest then."""
    primary_metric: MetricName = "conversion_rate"
    """The metric that decides promotion."""
    guardrails: tuple[GuardrailConfig, ...] = ()
    """Metrics that trigger a rollback when they degrade significantly."""
    alpha: float = Field(0.05, gt=0.0, lt=0.5)
    """Significance level (two-sided)."""
    power: float = Field(0.8, gt=0.5, lt=1.0)
    """Planned power at the minimum detectable effect."""
    minimum_detectable_effect: float = Field(0.05, gt=0.0, lt=1.0)
    """Smallest relative effect the experiment is sized for."""
    decision_policy: Literal["fixed_horizon", "sequential", "bandit"] = "sequential"
    """How the controller decides: one look at the end, continuous looks, or Thompson sampling."""
    min_users_per_variant: int | None = Field(None, ge=2)
    """Users every arm needs before a promotion; None derives it from ab.power (mde, alpha,
    power and the control arm's observed variance)."""
    srm_p_value: float = Field(0.001, gt=0.0, lt=0.5)
    """Sample-ratio-mismatch p-value below which the experiment is rolled back."""
    max_error_rate: float | None = Field(None, gt=0.0, le=1.0)
    """Treatment error rate (failed / all Recommend calls) that triggers a rollback; None: off."""
    max_latency_p99_ms: float | None = Field(None, gt=0.0)
    """Treatment p99 latency that triggers a rollback; None: off."""
    bandit_min_weight: float = Field(0.05, ge=0.0, lt=0.5)
    """Under the bandit policy, the least traffic share any arm keeps (continued exploration)."""

    @model_validator(mode="after")
    def _weights_sum_to_one(self) -> ExperimentConfig:
        total = sum(v.weight for v in self.variants)
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"variant weights sum to {total:g}, they must sum to 1")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names repeat: {names}")
        return self


class ControllerSettings(BaseModel):
    """The experiment sidecar: decision loop, metrics endpoint and routing refresh."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    interval_s: float = Field(300.0, gt=0.0)
    """Seconds between two evaluations of the running experiments."""
    metrics_host: str = "0.0.0.0"
    """Address the sidecar's Prometheus endpoint listens on."""
    metrics_port: int = Field(9465, ge=0, le=65535)
    """Port of the sidecar's Prometheus endpoint (0: any free port)."""
    routing_refresh_s: float = Field(2.0, gt=0.0)
    """Seconds between two reads of the experiment state by each gateway process."""
    state_file: Path = Path(".run/experiment_state.json")
    """Experiment state (overrides) of the embedded single-node profile."""
    prometheus_url: str | None = None
    """Prometheus HTTP API (e.g. http://prometheus:9090) for error-rate and latency guardrails;
    None: those guardrails are off."""
    bandit_seed: int | None = None
    """Seed of the Thompson-sampling draws (None: fresh entropy each evaluation)."""


class ABTestingSettings(BaseModel):
    """The `ab_testing` section."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    experiments: tuple[ExperimentConfig, ...] = ()
    """Running and planned experiments."""
    exposure_log_path: Path = Path(".run/exposures.sqlite3")
    """SQLite file of exposures in the embedded profile."""
    exposure_queue_size: int = Field(10_000, ge=100)
    """Exposures waiting to be written per process; beyond it new ones are dropped and
    counted (recsys_exposures_dropped_total)."""
    controller: ControllerSettings = ControllerSettings()
    """The experiment sidecar (`python -m ab sidecar`)."""

    @model_validator(mode="after")
    def _unique_names(self) -> ABTestingSettings:
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment names repeat: {names}")
        salts = [e.salt for e in self.experiments]
        if len(set(salts)) != len(salts):
            # one salt in two experiments correlates their splits: layers would not be
            # independent, and two experiments of one layer would share their users' buckets
            raise ValueError(f"experiment salts repeat: {salts}")
        _check_layers(self.experiments)
        return self


def decides(experiment: ExperimentConfig) -> frozenset[str]:
    """What the arms of `experiment` set: `model` (some arm names one) and `surface` (some arm
    does not serve the surface asked for)."""
    out: set[str] = set()
    if any(v.model is not None for v in experiment.variants):
        out.add("model")
    if any(not v.serve_surface for v in experiment.variants):
        out.add("surface")
    return frozenset(out)


def _check_layers(experiments: Sequence[ExperimentConfig]) -> None:
    owner: dict[str, str] = {}
    for experiment in experiments:
        for what in decides(experiment):
            layer = owner.setdefault(what, experiment.layer)
            if layer != experiment.layer:
                raise ValueError(
                    f"layers {layer!r} and {experiment.layer!r} both decide the {what} "
                    f"(experiment {experiment.name}): a user in both would get two answers; "
                    "put the experiments in one layer or let one of them leave it"
                )
