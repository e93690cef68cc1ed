"""Operational health of experiment arms (error rate, p99 latency) for rollback guardrails.

The controller reads it through the small `HealthSource` protocol, so tests feed fixed values
and production reads Prometheus' HTTP API (`/api/v1/query`, instant queries) with urllib.

Queries (templates; `{experiment}` and `{variant}` are filled from the config, which only
allows `[a-z0-9_]` names, so they cannot break out of the label matcher)::

    error rate:  sum(rate(recsys_experiment_requests_total{experiment="{experiment}",
                     variant="{variant}", code!="OK"}[5m]))
               / sum(rate(recsys_experiment_requests_total{experiment="{experiment}",
                     variant="{variant}"}[5m]))
    p99 latency: histogram_quantile(0.99, sum by (le) (rate(
                     recsys_experiment_request_duration_seconds_bucket{experiment="{experiment}",
                     variant="{variant}"}[5m])))

They need the gateway to count Recommend calls and their latency per experiment arm under
those names; until it does, the queries return no data and the guardrails do not fire (an
empty result is "unknown", never "breached").
"""

from __future__ import annotations

import asyncio
import json
import math
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ab.config import ExperimentConfig

ERROR_RATE_QUERY = (
    'sum(rate(recsys_experiment_requests_total{{experiment="{experiment}",'
    'variant="{variant}",code!="OK"}}[5m]))'
    ' / sum(rate(recsys_experiment_requests_total{{experiment="{experiment}",'
    'variant="{variant}"}}[5m]))'
)
LATENCY_P99_QUERY = (
    "histogram_quantile(0.99, sum by (le) (rate("
    'recsys_experiment_request_duration_seconds_bucket{{experiment="{experiment}",'
    'variant="{variant}"}}[5m])))'
)


class HealthError(RuntimeError):
    """The health source could not be read."""


@dataclass(frozen=True, slots=True)
class VariantHealth:
    """Operational health of one arm; None where unknown."""

    error_rate: float | None = None
    """Failed / all Recommend calls over the last minutes."""
    latency_p99_s: float | None = None
    """p99 Recommend latency in seconds."""


class HealthSource(Protocol):
    """Health per variant of one experiment."""

    async def health(self, experiment: ExperimentConfig) -> Mapping[str, VariantHealth]:
        """Per variant name."""
        ...


class PrometheusHealthSource:
    """`HealthSource` reading Prometheus' HTTP API with instant queries."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 5.0,
        error_rate_query: str = ERROR_RATE_QUERY,
        latency_query: str = LATENCY_P99_QUERY,
    ) -> None:
        self._url = base_url.rstrip("/") + "/api/v1/query"
        self._timeout_s = timeout_s
        self._error_rate_query = error_rate_query
        self._latency_query = latency_query

    def _query(self, promql: str) -> float | None:
        url = f"{self._url}?{urllib.parse.urlencode({'query': promql})}"
        try:
            with urllib.request.urlopen(url, timeout=self._timeout_s) as response:
                body = json.loads(response.read())
        except (OSError, ValueError) as exc:
            raise HealthError(f"prometheus query failed: {exc!r}") from exc
        if body.get("status") != "success":
            raise HealthError(f"prometheus query failed: {body.get('error')}")
        result = body["data"]["result"]
        if not result:
            return None
        value = float(result[0]["value"][1])
        return value if math.isfinite(value) else None

    async def health(self, experiment: ExperimentConfig) -> Mapping[str, VariantHealth]:
        def read() -> dict[str, VariantHealth]:
            out = {}
            for variant in experiment.variants:
                names = {"experiment": experiment.name, "variant": variant.name}
                out[variant.name] = VariantHealth(
                    error_rate=self._query(self._error_rate_query.format(**names)),
                    latency_p99_s=self._query(self._latency_query.format(**names)),
                )
            return out

        return await asyncio.to_thread(read)
