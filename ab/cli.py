"""Handlers of the sidecar, admin and report commands of `python -m ab` (see `ab.__main__`).

Every command reads the service's YAML config (`--config`) through `ab.sidecar_settings`. With the
`redis_postgres` feature store backend, state and audit log live in Postgres; with the
embedded backend (`make run`) in `ab_testing.controller.state_file`, and `analyze` and
`sidecar` read the gateways' SQLite exposure and event logs (`ab.backends`). Output is JSON
on stdout (`analyze` prints the paths of the files it wrote); errors go to stderr with exit
status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from ab import admin
from ab.sidecar_settings import SettingsError, SidecarSettings, load_sidecar_settings
from ab.store import ExperimentStoreError, JsonStateStore, PostgresStateStore, StateStore, open_pool


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        payload: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
        }
        try:
            decoded = json.loads(message)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            payload |= decoded
        else:
            payload["message"] = message
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(stream: IO[str] | None = None) -> None:
    """One JSON object per line on stderr (decisions are already JSON and get merged)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _settings(args: argparse.Namespace) -> SidecarSettings:
    path: Path | None = args.config
    return load_sidecar_settings(path, os.environ)


@contextlib.asynccontextmanager
async def _state_store(settings: SidecarSettings) -> AsyncIterator[StateStore]:
    if not settings.uses_postgres:
        yield JsonStateStore(settings.ab_testing.controller.state_file)
        return
    pool = await open_pool(settings.feature_store.postgres, max_size=2)
    try:
        yield PostgresStateStore(pool)
    finally:
        await pool.close()


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_sidecar_command(args: argparse.Namespace) -> int:
    """`python -m ab sidecar`."""
    from ab.sidecar import SidecarError, run_sidecar

    configure_logging()
    try:
        settings = _settings(args)
        asyncio.run(run_sidecar(settings))
    except (SettingsError, SidecarError, ExperimentStoreError) as exc:
        return _fail(str(exc))
    return 0


async def _experiments(args: argparse.Namespace, settings: SidecarSettings) -> Any:
    experiments = settings.ab_testing.experiments
    async with _state_store(settings) as store:
        if args.action == "list":
            return await admin.list_experiments(experiments, store)
        experiment = admin.find_experiment(experiments, args.experiment)
        if args.action == "show":
            return await admin.show_experiment(experiment, store)
        reason = args.reason or f"operator {args.action}"
        if args.action == "set-weights":
            weights = admin.parse_weights(experiment, args.weights)
            await admin.set_weights(experiment, store, weights, reason)
        elif args.action == "stop":
            await admin.stop(experiment, store, reason)
        else:
            await admin.rollback(experiment, store, reason)
        return await admin.show_experiment(experiment, store)


def run_experiments_command(args: argparse.Namespace) -> int:
    """`python -m ab experiments list|show|set-weights|stop|rollback`."""
    try:
        settings = _settings(args)
        result = asyncio.run(_experiments(args, settings))
    except (SettingsError, ExperimentStoreError, admin.AdminError) as exc:
        return _fail(str(exc))
    json.dump(result, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


async def _analyze(args: argparse.Namespace, settings: SidecarSettings) -> list[Path]:
    from ab.backends import open_backend
    from ab.report import build_analysis, render_report
    from ab.report_files import write_report_files
    from ab.report_plots import write_plots

    experiment = admin.find_experiment(settings.ab_testing.experiments, args.experiment)
    async with open_backend(settings, max_connections=2) as backend:
        try:
            analysis = await build_analysis(
                backend.metrics, backend.store, experiment, period=args.period
            )
        except ValueError as exc:  # too many periods for the span
            raise admin.AdminError(f"--period: {exc}") from exc
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    # Rendering a few figures takes a second of CPU: off the event loop's thread anyway.
    plots = await asyncio.to_thread(write_plots, analysis, out_dir)
    tables = write_report_files(analysis, out_dir)
    report = out_dir / f"{experiment.name}.md"
    figures = [p.name for p in plots if p.suffix == ".png"]
    report.write_text(render_report(analysis, figures), encoding="utf-8")
    return [report, *plots, *tables]


def run_analyze_command(args: argparse.Namespace) -> int:
    """`python -m ab analyze`."""
    try:
        settings = _settings(args)
        paths = asyncio.run(_analyze(args, settings))
    except (SettingsError, ExperimentStoreError, admin.AdminError) as exc:
        return _fail(str(exc))
    for path in paths:
        print(path)
    return 0
