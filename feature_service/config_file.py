"""Reading the service's YAML configuration file with `RECSYS__...` environment overrides.

pydantic-settings does the work: `YamlConfigSettingsSource` reads the file and
`EnvSettingsSource` turns `RECSYS__SECTION__KEY[__KEY...]` variables into nested values (JSON
for a list or mapping field, a plain string otherwise, so validation converts "50052" to the
field's type and a numeric-looking password stays a string). Both read what `load` is given:
the file named on the command line and the mapping `main()` passes down, never `.env` files,
secret folders or `os.environ` itself.

Shared by the gateway (`gateway.config`, every section) and the experiment sidecar
(`ab.sidecar_settings`, its sections only); it lives here because both may import `feature_service`
and neither may import the other's package. Each caller's settings class derives from
:class:`FileSettings`; the section models stay with their packages.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

ENV_PREFIX = "RECSYS__"
_DELIMITER = "__"

SettingsT = TypeVar("SettingsT", bound="FileSettings")


class ConfigFileError(ValueError):
    """The file is unreadable or not a mapping, or an override names no valid key path."""


class FileSettings(BaseSettings):
    """Settings read by :func:`load`: sections from the YAML file, `RECSYS__` overrides on top.

    Unknown keys are errors, the object is frozen, and every field's docstring is its
    description, as for the section models.
    """

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=_DELIMITER,
        case_sensitive=False,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what `load` read: the process environment is read once, in main().
        return (init_settings,)


class _YamlFile(YamlConfigSettingsSource):
    """The YAML file, with the errors named as the service names them."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            loaded = super()._read_file(file_path)
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigFileError(f"cannot read config file {file_path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigFileError(f"{file_path}: the top level must be a mapping of sections")
        return loaded


class _Environment(EnvSettingsSource):
    """`RECSYS__` variables from the mapping given instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def _check_override_names(environ: Mapping[str, str]) -> None:
    for name in sorted(environ):
        if name.upper().startswith(ENV_PREFIX) and not all(
            name[len(ENV_PREFIX) :].split(_DELIMITER)
        ):
            raise ConfigFileError(f"environment variable {name}: empty key segment")


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` laid over it, section by section."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
    return merged


def load(
    settings_cls: type[SettingsT],
    path: Path | None,
    environ: Mapping[str, str],
    *,
    own_sections_only: bool = False,
) -> SettingsT:
    """``settings_cls`` from the file (when given) with ``RECSYS__`` overrides from ``environ``.

    Args:
        own_sections_only: read only the file's sections that ``settings_cls`` has (the
            sidecar), leaving the others to their owner; overrides of other sections are
            always left alone.

    Raises:
        ConfigFileError: the file cannot be read or parsed, or an override is malformed.
        pydantic.ValidationError: a key is unknown or a value invalid (see :func:`describe`).
    """
    data: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigFileError(f"cannot read config file {path}: not an existing file")
        data = _YamlFile(settings_cls, yaml_file=path).yaml_data
    if own_sections_only:
        data = {key: value for key, value in data.items() if key in settings_cls.model_fields}
    _check_override_names(environ)
    try:
        overrides = _Environment(settings_cls, environ)()
    except SettingsError as exc:
        raise ConfigFileError(f"invalid environment override: {exc}") from exc
    return settings_cls(**_merge(data, overrides))


def describe(exc: ValidationError, path: Path | None) -> str:
    """One line naming every invalid key: `invalid configuration in x.yaml: a.b: message`."""
    source = f" in {path}" if path is not None else ""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )
    return f"invalid configuration{source}: {problems}"
