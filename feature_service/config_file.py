"""Reading the service's YAML configuration file with `RECSYS__...` environment overrides.

Shared by the gateway (`gateway.config`, every section) and the experiment sidecar
(`ab.settings`, its sections only); it lives here because both may import `feature_service`
and neither may import the other's package. Validation stays with the callers' models.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

ENV_PREFIX = "RECSYS__"


class ConfigFileError(ValueError):
    """The file is unreadable or not a mapping, or an override names no valid key path."""


def read_config(
    path: Path | None, environ: Mapping[str, str], sections: Collection[str] | None = None
) -> dict[str, Any]:
    """The file's sections (all, or only `sections`) with `RECSYS__SECTION__KEY[__KEY...]`
    overrides applied. Override values stay strings: validation converts "50052" or "true" to
    the field's type, and a numeric-looking password stays a string.

    Raises:
        ConfigFileError: the file cannot be read or parsed, or an override is malformed.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigFileError(f"cannot read config file {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigFileError(f"{path}: the top level must be a mapping of sections")
        data = loaded or {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [key.lower() for key in name[len(ENV_PREFIX) :].split("__")]
        if sections is not None and keys[0] not in sections:
            continue
        if not all(keys):
            raise ConfigFileError(f"environment variable {name}: empty key segment")
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigFileError(f"environment variable {name}: {key} is not a section")
            node = child
        node[keys[-1]] = raw
    if sections is not None:
        data = {key: value for key, value in data.items() if key in sections}
    return data


def describe(exc: ValidationError, path: Path | None) -> str:
    """One line naming every invalid key: `invalid configuration in x.yaml: a.b: message`."""
    source = f" in {path}" if path is not None else ""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )
    return f"invalid configuration{source}: {problems}"
