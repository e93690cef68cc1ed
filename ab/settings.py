"""The sidecar's view of the gateway's YAML configuration.

The sidecar reads the same file as the gateway but validates only the sections it owns or
needs: `ab_testing` (`ab.config.ABTestingSettings`) and `feature_store`
(`feature_service.config.FeatureStoreSettings`, for the Postgres connection or the embedded
backend). Other sections belong to the gateway and are left to it (ab must not import
gateway). `RECSYS__SECTION__KEY=value` environment overrides apply as in the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ab.config import ABTestingSettings
from feature_service.config import FeatureStoreSettings

ENV_PREFIX = "RECSYS__"
_SECTIONS = ("ab_testing", "feature_store")


class SettingsError(ValueError):
    """The configuration file is missing, unreadable or invalid; the message names the key."""


class SidecarSettings(BaseModel):
    """The sections of the service configuration the sidecar uses."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    ab_testing: ABTestingSettings = ABTestingSettings()
    """Experiments and the controller."""
    feature_store: FeatureStoreSettings = FeatureStoreSettings()
    """Where exposures, events and decisions live (Postgres for `redis_postgres`)."""

    @property
    def uses_postgres(self) -> bool:
        """Whether the deployment has Postgres (production) or the embedded JSON state."""
        return self.feature_store.backend == "redis_postgres"


def load_sidecar_settings(path: Path | None, environ: Mapping[str, str]) -> SidecarSettings:
    """Reads the YAML file, applies `RECSYS__...` overrides of our sections and validates them.

    Raises:
        SettingsError: the file is unreadable, or a key of our sections is unknown or invalid.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"cannot read config file {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"{path}: the top level must be a mapping of sections")
        data = loaded or {}
    for name, raw in sorted(environ.items()):
        if name.startswith(ENV_PREFIX):
            keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
            if keys[0] in _SECTIONS:
                _apply_override(data, name, keys, raw)
    try:
        return SidecarSettings.model_validate({k: data[k] for k in _SECTIONS if k in data})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        source = f" in {path}" if path is not None else ""
        raise SettingsError(f"invalid configuration{source}: {problems}") from exc


def _apply_override(data: dict[str, Any], name: str, keys: list[str], raw: str) -> None:
    if not all(keys):
        raise SettingsError(f"environment variable {name}: empty key segment")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise SettingsError(f"environment variable {name}: {key} is not a section")
        node = child
    node[keys[-1]] = raw
