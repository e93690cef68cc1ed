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

from pydantic import BaseModel, ConfigDict, ValidationError

from ab.config import ABTestingSettings
from feature_service.config import FeatureStoreSettings
from feature_service.config_file import ConfigFileError, describe, read_config

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
    try:
        return SidecarSettings.model_validate(read_config(path, environ, _SECTIONS))
    except ConfigFileError as exc:
        raise SettingsError(str(exc)) from exc
    except ValidationError as exc:
        raise SettingsError(describe(exc, path)) from exc
