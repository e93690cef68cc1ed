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
    timeout_s: float = Field(0.25, gt=0)
    """Connect and read timeout of one Redis call."""
    retry_after_s: float = Field(1.0, ge=0)
    """After a Redis failure, reads go straight to Postgres for this long before retrying."""


class PostgresSettings(BaseModel):
    """L3 store: offline feature snapshot and the durable event log."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    dsn: str = "postgresql://recsys@127.0.0.1:5432/recsys"
    """Connection string without the password."""
    password: SecretStr | None = None
    """Postgres password; set it through RECSYS__FEATURE_STORE__POSTGRES__PASSWORD."""
    pool_size: int = Field(10, ge=1, le=200)
    """Connections in the asyncpg pool per process."""
    timeout_s: float = Field(2.0, gt=0)
    """Connect timeout and per-statement timeout of Postgres calls."""


class LocalCacheSettings(BaseModel):
    """L1: the in-process cache of users in front of Redis (backend `redis_postgres`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_users: int = Field(100_000, ge=1)
    """Most users held in the in-process cache (least recently used go first)."""
    user_ttl_s: float = Field(1.0, gt=0)
    """Lifetime of a cached user; bounds staleness when another process's invalidation is lost."""


class EmbeddedSettings(BaseModel):
    """Single-node store: offline snapshot in process plus a local SQLite event log."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    event_log_path: Path = Path(".run/events.sqlite3")
    """SQLite file holding every recorded event (created on first start); the gateway
    processes of one machine share it."""
    tail_interval_s: float = Field(0.1, gt=0, le=60)
    """How often a gateway reads the events its sibling processes stored in the shared log (see
    feature_service/event_tail.py): the longest a view or purchase recorded through one process
    waits before the others' recommendations reflect it."""


class FeatureStoreSettings(BaseModel):
    """The `feature_store` section."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    backend: Literal["embedded", "redis_postgres"] = "embedded"
    """`embedded` needs no servers; `redis_postgres` uses Redis (L2) and Postgres (L3)."""
    recent_items: int = Field(50, ge=1, le=1000)
    """Length of each user's recent-activity lists (views, carts, purchases)."""
    recent_window_s: int = Field(7 * 86400, gt=0)
    """Events older than this do not count as recent for filtering."""
    spool_path: Path = Path(".run/event-spool.jsonl")
    """Local append-only file holding acknowledged event batches while Postgres is down
    (redis_postgres backend); one per gateway process."""
    spool_replay_interval_s: float = Field(2.0, gt=0)
    """How often spooled batches are retried against Postgres."""
    spool_adopt: str | None = "event-spool*.jsonl"
    """Glob, in the spool's directory, of other processes' spool files this process replays
    once their writer has exited (a file whose writer lives is never touched); None replays
    only `spool_path`."""
    embedded: EmbeddedSettings = EmbeddedSettings()
    """Embedded backend settings."""
    redis: RedisSettings = RedisSettings()
    """Redis settings (backend `redis_postgres`)."""
    postgres: PostgresSettings = PostgresSettings()
    """Postgres settings (backend `redis_postgres`)."""
    l1: LocalCacheSettings = LocalCacheSettings()
    """In-process cache settings (backend `redis_postgres`)."""
