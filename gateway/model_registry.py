"""Which ranker models and versions the gateway may route to, kept current without restarts.

At start-up every model the configuration names (the default and each experiment arm) is
checked against the model repository: its newest version's `metadata.json` must list exactly
the feature columns `feature_service.definitions.FEATURE_NAMES` builds, or the process stops
(a model trained on other features would score garbage). While serving, a poller asks Triton
which versions are READY; a new version is routed to only once it is loaded and its metadata
checks out, so a version that fails to load leaves the previous one serving. A version that
loads but was trained on other features cannot be routed around (the ensemble runs the newest
loaded ONNX version): the fallback ranker answers, flagged, until it is replaced.
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


def executing_model(model: str) -> str:
    """The ONNX model an ensemble's first step runs (`triton_models.ranker_repositories`)."""
    return f"{model}_onnx"


def discovery_model(repository: Path, model: str, version: int) -> str | None:
    """The discovery model `model` version `version` also runs (its ensemble's second step,
    answering `discovery_score`), as its metadata names it; None for a ranker without one."""
    path = repository / model / str(version) / METADATA
    try:
        name = json.loads(path.read_text()).get("discovery_model")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name else None


def composing_models(repository: Path, model: str, version: int) -> list[str]:
    """The models whose metadata must match before `model` version `version` is used: the
    ensemble, the ranker's ONNX model and the discovery model's, if any."""
    names = [model, executing_model(model)]
    discovery = discovery_model(repository, model, version)
    if discovery is not None:
        names.append(executing_model(discovery))
    return names


class ModelRegistry:
    """The routable version of each configured model.

    A ranker is an ensemble whose step runs the newest loaded version of `<model>_onnx`, so
    version v of the ensemble is routable only while v is also the newest READY version of
    the ONNX model and both carry metadata that matches this gateway's features. Triton keeps
    two versions loaded (`ServingOptions.loaded_versions`), so the previous version keeps
    serving while gateways switch, and stays when a new version fails to load.
    """

    def __init__(self, repository: Path, models: Iterable[str]) -> None:
        self._repository = repository
        self._models = tuple(dict.fromkeys(models))
        self._routable: dict[str, int | None] = {}
        self._discovery: dict[str, bool] = {}
        self._reported: set[tuple[str, int]] = set()

    @property
    def models(self) -> tuple[str, ...]:
        """Models the configuration names."""
        return self._models

    def validate_repository(self) -> None:
        """Checks the newest version of every configured model (and the ONNX model it runs)
        on disk.

        Raises:
            ConfigError: a model's newest version is missing or its features do not match.
        """
        for model in self._models:
            versions = _versions_on_disk(self._repository / model)
            if not versions:
                raise ConfigError(f"model {model!r} is configured but not in {self._repository}")
            for name in composing_models(self._repository, model, versions[-1]):
                newest = versions[-1] if name in (model, executing_model(model)) else None
                problem = self._problem(name, newest)
                if problem is not None:
                    raise ConfigError(problem)
            self._route(model, versions[-1])

    def _problem(self, name: str, version: int | None) -> str | None:
        """`metadata_problem` of `name` at `version` (None: its newest version on disk, for a
        discovery model, whose versions are its own)."""
        if version is None:
            versions = _versions_on_disk(self._repository / name)
            if not versions:
                return f"model {name!r} is named by an ensemble but not in {self._repository}"
            version = versions[-1]
        return metadata_problem(self._repository, name, version)

    def _route(self, model: str, version: int | None) -> None:
        self._routable[model] = version
        self._discovery[model] = (
            version is not None and discovery_model(self._repository, model, version) is not None
        )

    def version(self, model: str) -> int | None:
        """The version to request for `model`; None when it cannot be routed to."""
        return self._routable.get(model)

    def has_discovery(self, model: str) -> bool:
        """Whether the routed version of `model` also answers `discovery_score`."""
        return self._discovery.get(model, False)

    def update(self, ready: dict[str, list[str]]) -> None:
        """Routes each model to the version its ensemble and ONNX model both serve READY and
        whose metadata checks out; no route (the fallback ranker answers) when the newest
        loaded ONNX version is unusable."""
        for model in self._models:
            onnx_ready = sorted(
                int(v) for v in ready.get(executing_model(model), []) if v.isdigit()
            )
            ensemble_ready = {int(v) for v in ready.get(model, []) if v.isdigit()}
            previous = self._routable.get(model)
            route: int | None = None
            if onnx_ready:
                newest = onnx_ready[-1]
                problems = [
                    self._problem(name, newest if name in (model, executing_model(model)) else None)
                    for name in composing_models(self._repository, model, newest)
                ]
                problem = next((p for p in problems if p is not None), None)
                if problem is None and newest in ensemble_ready:
                    route = newest
                elif problem is None and previous in ensemble_ready:
                    route = previous  # the new ensemble version is still loading
                elif problem is not None and (model, newest) not in self._reported:
                    self._reported.add((model, newest))
                    _log.error("not routing to %s version %d: %s", model, newest, problem)
            if route != self._routable.get(model):
                _log.warning("routing %s to version %s", model, route)
            self._route(model, route)

    async def poll(self, ranker: TritonRanker, interval_s: float) -> None:
        """Refreshes the routable versions from Triton every `interval_s` until cancelled."""
        while True:
            with contextlib.suppress(RankerFailure):  # Triton down: keep the last known routes
                self.update(await ranker.ready_versions())
            await asyncio.sleep(interval_s)
