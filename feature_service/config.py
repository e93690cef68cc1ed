"""Typed settings of the `feature_store` section."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class RedisSettings(BaseModel):
    """L2 cache and real-time feature store."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    url: str = "redis://127.0.0.1:6379/0"
    """Redis URL without the password."""
    password: SecretStr | None = None
    """Redis password; set it through RECSYS__FEATURE_STORE__REDIS__PASSWORD."""
    user_ttl_s: int = Field(3600, gt=0)
    """Lifetime of cached user features."""
    item_ttl_s: int = Field(86400, gt=0)
    """Lifetime of cached item features."""


class PostgresSettings(BaseModel):
    """L3 store: offline feature snapshot and the durable event log."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    dsn: str = "postgresql://recsys@127.0.0.1:5432/recsys"
    """Connection string without the password."""
    password: SecretStr | None = None
    """Postgres password; set it through RECSYS__FEATURE_STORE__POSTGRES__PASSWORD."""
    pool_size: int = Field(10, ge=1, le=200)
    """Connections in the asyncpg pool per process."""


class EmbeddedSettings(BaseModel):
    """Single-node store: offline snapshot in process plus a local SQLite event log."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    event_log_path: Path = Path(".run/events.sqlite3")
    """SQLite file holding every recorded event (created on first start)."""


class FeatureStoreSettings(BaseModel):
    """The `feature_store` section."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    backend: Literal["embedded", "redis_postgres"] = "embedded"
    """`embedded` needs no servers; `redis_postgres` uses Redis (L2) and Postgres (L3)."""
    recent_items: int = Field(50, ge=1, le=1000)
    """Length of each user's recent-activity lists (views, carts, purchases)."""
    recent_window_s: int = Field(7 * 86400, gt=0)
    """Events older than this do not count as recent for filtering."""
    embedded: EmbeddedSettings = EmbeddedSettings()
    """Embedded backend settings."""
    redis: RedisSettings = RedisSettings()
    """Redis settings (backend `redis_postgres`)."""
    postgres: PostgresSettings = PostgresSettings()
    """Postgres settings (backend `redis_postgres`)."""
