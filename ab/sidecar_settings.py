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

from pydantic import ValidationError

from ab.config import ABTestingSettings
from feature_service.config import FeatureStoreSettings
from feature_service.config_file import ConfigFileError, FileSettings, describe, load


class SettingsError(ValueError):
    """The configuration file is missing, unreadable or invalid; the message names the key."""


class SidecarSettings(FileSettings):
    """The sections of the service configuration the sidecar uses."""

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
        return load(SidecarSettings, path, environ, own_sections_only=True)
    except ConfigFileError as exc:
        raise SettingsError(str(exc)) from exc
    except ValidationError as exc:
        raise SettingsError(describe(exc, path)) from exc
