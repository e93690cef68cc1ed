"""Versioned SQL migrations, shared by the feature store and the experiment store.

Files are named `NNN_name.sql`; `apply_migrations` runs the ones not yet recorded in a
bookkeeping table, inside the caller's transaction and under a Postgres advisory lock, so
concurrent starters queue up and the later ones find nothing to do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


class MigrationError(ValueError):
    """A migration file is misnamed or a version repeats."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema migration file."""

    version: int
    name: str
    sql: str


def load_migrations(directory: Path) -> list[Migration]:
    """The migrations in `directory`, by version.

    Raises:
        MigrationError: a file name does not match `NNN_name.sql` or a version repeats.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration {path.name!r} is not named NNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"migration version {version} appears twice in {directory}")
        found[version] = Migration(version, match.group(2), path.read_text())
    return [found[v] for v in sorted(found)]


async def apply_migrations(
    connection: Any,
    migrations: Sequence[Migration],
    table: Literal["schema_migrations", "ab_schema_migrations"],
    lock_id: int,
) -> list[int]:
    """Applies the migrations not yet recorded in `table`; returns their versions.

    Call inside a transaction of `connection` (an asyncpg connection): the advisory lock and
    every statement commit or roll back together.
    """
    await connection.execute("SELECT pg_advisory_xact_lock($1)", lock_id)
    # `table` is one of two fixed identifiers (see the type), never user input.
    await connection.execute(
        f"""
        CREATE TABLE IF NOT EXISTS {table} (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    applied = {row["version"] for row in await connection.fetch(f"SELECT version FROM {table}")}
    done: list[int] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        await connection.execute(migration.sql)
        await connection.execute(
            f"INSERT INTO {table} (version, name) VALUES ($1, $2)",
            migration.version,
            migration.name,
        )
        done.append(migration.version)
    return done
