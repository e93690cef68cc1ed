"""Which ranker models and versions the gateway may route to, kept current without restarts.

At start-up every model the configuration names (the default and each experiment arm) is
checked against the model repository: its newest version's `metadata.json` must list exactly
the feature columns `feature_service.definitions.FEATURE_NAMES` builds, or the process stops
(a model trained on other features would score garbage). While serving, a poller asks Triton
which versions are READY; a new version is routed to only once its metadata checks out, so a
corrupt or mismatched version leaves the previous one serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from feature_service.definitions import FEATURE_NAMES
from gateway.config import ConfigError
from gateway.stages.rank import RankerFailure, TritonRanker

_log = logging.getLogger(__name__)
METADATA = "metadata.json"


def _versions_on_disk(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def metadata_problem(repository: Path, model: str, version: int) -> str | None:
    """Why `model` version `version` must not be used, or None when its metadata is sound."""
    path = repository / model / str(version) / METADATA
    try:
        names = json.loads(path.read_text())["feature_names"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{path}: unreadable model metadata ({exc})"
    if tuple(names) != FEATURE_NAMES:
        return (
            f"{path}: the model expects {len(names)} features in another order than the "
            f"{len(FEATURE_NAMES)} this gateway builds; retrain or deploy a matching gateway"
        )
    return None


class ModelRegistry:
    """The routable version of each configured model."""

    def __init__(self, repository: Path, models: Iterable[str]) -> None:
        self._repository = repository
        self._models = tuple(dict.fromkeys(models))
        self._routable: dict[str, int] = {}
        self._rejected: set[tuple[str, int]] = set()

    @property
    def models(self) -> tuple[str, ...]:
        """Models the configuration names."""
        return self._models

    def validate_repository(self) -> None:
        """Checks the newest version of every configured model on disk.

        Raises:
            ConfigError: a model's newest version is missing or its features do not match.
        """
        for model in self._models:
            versions = _versions_on_disk(self._repository / model)
            if not versions:
                raise ConfigError(f"model {model!r} is configured but not in {self._repository}")
            problem = metadata_problem(self._repository, model, versions[-1])
            if problem is not None:
                raise ConfigError(problem)
            self._routable[model] = versions[-1]

    def version(self, model: str) -> int | None:
        """The version to request for `model`; None when it cannot be routed to."""
        return self._routable.get(model)

    def update(self, ready: dict[str, list[str]]) -> None:
        """Routes each model to its newest READY version whose metadata checks out."""
        for model in self._models:
            candidates = sorted((int(v) for v in ready.get(model, []) if v.isdigit()), reverse=True)
            for version in candidates:
                if (model, version) in self._rejected:
                    continue
                problem = metadata_problem(self._repository, model, version)
                if problem is None:
                    if self._routable.get(model) != version:
                        _log.info("routing %s to version %d", model, version)
                    self._routable[model] = version
                    break
                self._rejected.add((model, version))
                _log.error("not routing to %s version %d: %s", model, version, problem)

    async def poll(self, ranker: TritonRanker, interval_s: float) -> None:
        """Refreshes the routable versions from Triton every `interval_s` until cancelled."""
        while True:
            with contextlib.suppress(RankerFailure):  # Triton down: keep the last known routes
                self.update(await ranker.ready_versions())
            await asyncio.sleep(interval_s)
