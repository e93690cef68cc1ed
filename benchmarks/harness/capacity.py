"""Capacity and cost: cores and replicas for a target rate, and dollars per million requests.

The price is a public on-demand list price written down here, not fetched: recheck it before
quoting the figure (https://aws.amazon.com/ec2/pricing/on-demand/).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

# AWS EC2 c7i.large (2 vCPU, 4 GiB), Linux on-demand, us-east-1: USD 0.08925 per hour.
# Written from memory on 2026-11-26 (no network on the benchmark machine) -- RECHECK it.
PRICE_INSTANCE_TYPE = "c7i.large (2 vCPU, 4 GiB), Linux on-demand, us-east-1"
PRICE_USD_PER_INSTANCE_HOUR = 0.08925
PRICE_VCPUS_PER_INSTANCE = 2
PRICE_TAKEN_ON = "2026-11-26"
PRICE_SOURCE = "AWS on-demand list price, from memory (no network here); recheck before quoting"
PRICE_USD_PER_VCPU_HOUR = PRICE_USD_PER_INSTANCE_HOUR / PRICE_VCPUS_PER_INSTANCE

BRIEF_USD_PER_MILLION = 0.26
"""The brief's cost target per million Recommend calls."""
TARGET_RPS = 10_000
TARGET_UTILISATION = 0.7
"""Plan cores to run at 70% busy: head-room for spikes and a lost replica."""


@dataclass(frozen=True)
class CapacityPlan:
    """How many cores and replicas a target rate needs, and what a million requests cost."""

    measured_rps: float
    """Sustainable rate measured on this machine (p99 under the target, no errors)."""
    machine_cores: int
    """os.cpu_count() of the benchmark machine (ghz ran on it too)."""
    rps_per_core: float
    target_rps: int
    utilisation: float
    cores_needed: int
    cores_per_replica: int
    replicas_needed: int
    usd_per_vcpu_hour: float
    usd_per_million: float
    """Cost of a million requests at `utilisation`, cores billed per vCPU-hour."""
    usd_per_million_at_full_load: float
    brief_usd_per_million: float
    meets_brief_cost: bool

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("rps_per_core", "usd_per_million", "usd_per_million_at_full_load"):
            out[key] = round(out[key], 4)
        return out


def capacity_plan(
    measured_rps: float,
    machine_cores: int,
    *,
    target_rps: int = TARGET_RPS,
    utilisation: float = TARGET_UTILISATION,
    cores_per_replica: int = 2,
    usd_per_vcpu_hour: float = PRICE_USD_PER_VCPU_HOUR,
    brief_usd_per_million: float = BRIEF_USD_PER_MILLION,
) -> CapacityPlan:
    """Scale the measured per-core rate to `target_rps`.

    Per-core rate = measured rate / machine cores: conservative, since the load generator
    shared the cores. Cores needed = target / (per-core rate x utilisation), rounded up;
    replicas = cores / cores per replica, rounded up. Cost per million = vCPU-hour price /
    (per-core rate x utilisation x 3600) x 1e6.

    Raises:
        ValueError: a non-positive rate, core count or utilisation.
    """
    if measured_rps <= 0 or machine_cores <= 0:
        raise ValueError("measured_rps and machine_cores must be positive")
    if not 0 < utilisation <= 1:
        raise ValueError("utilisation must be in (0, 1]")
    if cores_per_replica < 1:
        raise ValueError("cores_per_replica must be >= 1")
    per_core = measured_rps / machine_cores
    cores = math.ceil(target_rps / (per_core * utilisation))
    per_million_full = usd_per_vcpu_hour / (per_core * 3600) * 1e6
    per_million = per_million_full / utilisation
    return CapacityPlan(
        measured_rps=measured_rps,
        machine_cores=machine_cores,
        rps_per_core=per_core,
        target_rps=target_rps,
        utilisation=utilisation,
        cores_needed=cores,
        cores_per_replica=cores_per_replica,
        replicas_needed=math.ceil(cores / cores_per_replica),
        usd_per_vcpu_hour=usd_per_vcpu_hour,
        usd_per_million=per_million,
        usd_per_million_at_full_load=per_million_full,
        brief_usd_per_million=brief_usd_per_million,
        meets_brief_cost=per_million <= brief_usd_per_million,
    )


def cpu_accounted_rps_per_core(requests: int, server_cpu_seconds: float) -> float | None:
    """Requests per second of server CPU (gateway + Triton + nginx processes), from /proc.

    Unlike the machine-level figure this leaves out the load generator's share; None when no
    CPU time was measured.
    """
    if server_cpu_seconds <= 0:
        return None
    return requests / server_cpu_seconds
