"""The experiment sidecar process: `python -m ab sidecar --config PATH`.

Opens the experiment data (Postgres migrated to the ab schema, or the SQLite files), serves
the sidecar's Prometheus metrics on its own port (`ab_testing.controller.metrics_port`, 9465
by default), runs the controller every `interval_s` while it holds the leader lease
(`ab.leader`: one sidecar of all the pods decides, the others stay up and take over when it
dies) and stops cleanly on SIGTERM or SIGINT: the current evaluation finishes, then the
lease, the metrics server and the data close, in reverse order of opening.

Experiment data comes from `ab.backends`: Postgres (`redis_postgres`), or with the embedded
feature store of `make run` the gateways' SQLite exposure and event logs and the JSON state
file; decisions, audit log and routing updates are the same on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from prometheus_client import start_http_server

from ab.backends import open_backend
from ab.controller import Controller
from ab.health import HealthSource, PrometheusHealthSource
from ab.leader import LeaderLease, lease_for, leased
from ab.prometheus_metrics import SidecarMetrics
from ab.sidecar_settings import SidecarSettings

_log = logging.getLogger(__name__)


class SidecarError(RuntimeError):
    """The sidecar cannot run with this configuration."""


@dataclass(frozen=True, slots=True)
class RunningSidecar:
    """What a started sidecar exposes (tests read the metrics port)."""

    controller: Controller
    metrics: SidecarMetrics
    metrics_port: int
    lease: LeaderLease
    """Only its holder evaluates (one decision-maker for all the pods' sidecars)."""


@contextlib.asynccontextmanager
async def open_sidecar(settings: SidecarSettings) -> AsyncIterator[RunningSidecar]:
    """Opens the experiment data and the metrics endpoint; closes both on exit.

    Raises:
        ab.store.ExperimentStoreError: Postgres or the SQLite files unreachable, or a
            migration failed.
        SidecarError: the metrics port is taken.
    """
    controller_settings = settings.ab_testing.controller
    metrics = SidecarMetrics()
    async with open_backend(settings) as backend:
        try:
            server, thread = start_http_server(
                controller_settings.metrics_port,
                controller_settings.metrics_host,
                registry=metrics.registry,
            )
        except OSError as exc:
            raise SidecarError(
                f"ab_testing.controller.metrics_port: cannot listen on "
                f"{controller_settings.metrics_host}:{controller_settings.metrics_port} "
                f"({exc.strerror})"
            ) from exc
        try:
            health: HealthSource | None = None
            if controller_settings.prometheus_url:
                health = PrometheusHealthSource(controller_settings.prometheus_url)
            controller = Controller(
                settings.ab_testing.experiments,
                backend.metrics,
                backend.store,
                metrics,
                health=health,
                rng=np.random.default_rng(controller_settings.bandit_seed),
            )
            _log.info("ab sidecar data: %s", backend.description)
            async with leased(lease_for(settings)) as lease:
                yield RunningSidecar(controller, metrics, int(server.server_port), lease)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


async def run_sidecar(settings: SidecarSettings, stop: asyncio.Event | None = None) -> None:
    """Runs until SIGTERM / SIGINT (or until `stop` is set)."""
    stop_event = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_event.set)
    try:
        async with open_sidecar(settings) as sidecar:
            _log.info(
                "ab sidecar running: %d experiments, metrics on port %d, every %.0f s",
                len(settings.ab_testing.experiments),
                sidecar.metrics_port,
                settings.ab_testing.controller.interval_s,
            )
            await sidecar.controller.run(
                stop_event, settings.ab_testing.controller.interval_s, sidecar.lease
            )
        _log.info("ab sidecar stopped")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
