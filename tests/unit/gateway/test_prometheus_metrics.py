"""Metric children looked up once: the same child, counting into the labelled series."""

from __future__ import annotations

from gateway.prometheus_metrics import Metrics


def test_child_is_the_labelled_child_kept_for_reuse() -> None:
    metrics = Metrics()
    first = metrics.child(metrics.arm_requests, "exp", "control", "OK")
    assert metrics.child(metrics.arm_requests, "exp", "control", "OK") is first
    assert metrics.child(metrics.arm_requests, "exp", "treatment", "OK") is not first
    first.inc()
    first.inc()
    metrics.child(metrics.degraded, "NO_MODEL").inc()
    sample = metrics.registry.get_sample_value
    labels = {"experiment": "exp", "variant": "control", "code": "OK"}
    assert sample("recsys_experiment_requests_total", labels) == 2.0
    assert sample("recsys_degraded_responses_total", {"reason": "NO_MODEL"}) == 1.0
