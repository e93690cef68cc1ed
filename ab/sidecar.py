"""The experiment sidecar process: `python -m ab sidecar --config PATH`.

Opens the Postgres pool (and migrates the ab schema), serves the sidecar's Prometheus metrics
on its own port (`ab_testing.controller.metrics_port`, 9465 by default), runs the controller
every `interval_s` and stops cleanly on SIGTERM or SIGINT: the current evaluation finishes,
then the metrics server and the pool close, in reverse order of opening.

The controller needs Postgres (exposures and events live there): with the embedded feature
store backend the sidecar refuses to start; the admin commands still work on the JSON state.
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

from ab.controller import Controller, PostgresSumsSource
from ab.health import HealthSource, PrometheusHealthSource
from ab.settings import SidecarSettings
from ab.store import PostgresStateStore, open_pool
from ab.telemetry import SidecarMetrics

_log = logging.getLogger(__name__)


class SidecarError(RuntimeError):
    """The sidecar cannot run with this configuration."""


@dataclass(frozen=True, slots=True)
class RunningSidecar:
    """What a started sidecar exposes (tests read the metrics port)."""

    controller: Controller
    metrics: SidecarMetrics
    metrics_port: int


@contextlib.asynccontextmanager
async def open_sidecar(settings: SidecarSettings) -> AsyncIterator[RunningSidecar]:
    """Opens the pool and the metrics endpoint; closes both on exit.

    Raises:
        SidecarError: the feature store backend is not `redis_postgres`.
        ab.store.ExperimentStoreError: Postgres unreachable or migration failed.
    """
    if not settings.uses_postgres:
        raise SidecarError(
            "the sidecar needs feature_store.backend: redis_postgres (exposures and events "
            "are in Postgres)"
        )
    controller_settings = settings.ab_testing.controller
    metrics = SidecarMetrics()
    pool = await open_pool(settings.feature_store.postgres)
    try:
        server, thread = start_http_server(
            controller_settings.metrics_port,
            controller_settings.metrics_host,
            registry=metrics.registry,
        )
        try:
            health: HealthSource | None = None
            if controller_settings.prometheus_url:
                health = PrometheusHealthSource(controller_settings.prometheus_url)
            controller = Controller(
                settings.ab_testing.experiments,
                PostgresSumsSource(pool),
                PostgresStateStore(pool),
                metrics,
                health=health,
                rng=np.random.default_rng(controller_settings.bandit_seed),
            )
            yield RunningSidecar(controller, metrics, int(server.server_port))
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
    finally:
        await pool.close()


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
            await sidecar.controller.run(stop_event, settings.ab_testing.controller.interval_s)
        _log.info("ab sidecar stopped")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
