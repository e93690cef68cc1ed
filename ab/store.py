"""Experiment storage: exposures, the decision audit log and the state that routing applies.

Postgres (production): versioned SQL files `ab/migrations/NNN_name.sql`, applied on open in
one transaction under an advisory lock and recorded in `ab_schema_migrations` (separate from
the feature service's `schema_migrations`, so the two packages migrate independently and in
either order). Exposures are inserted with `ON CONFLICT (request_id, experiment) DO NOTHING`, so a
retried batch is harmless. A decision writes the new `experiment_state` row and its audit row
in one transaction: routing never sees a state without its reason.

JSON file (embedded single-node profile): the same state in one file, replaced atomically;
the audit log is a JSON-lines file next to it.

Values only travel as query parameters. Library errors become `ExperimentStoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias

import asyncpg

from ab.exposures import Exposure
from feature_service import postgres as feature_postgres
from feature_service import schema
from feature_service.config import PostgresSettings
from feature_service.schema import Migration
from feature_service.store import FeatureStoreError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Advisory lock key of this schema (distinct from the feature service's keys).
_MIGRATION_LOCK = 0x7265_6373_7973_0A01
# InternalClientError is not an InterfaceError: a connection whose server was SIGKILLed can
# raise it while the pool resets it on release (as `feature_service.postgres` maps it too).
POSTGRES_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
"""What asyncpg and the network raise for a failed Postgres call; mapped to our errors."""
_ERRORS = POSTGRES_ERRORS

Status: TypeAlias = Literal["running", "rolled_back", "promoted", "stopped"]
STATUSES: tuple[Status, ...] = ("running", "rolled_back", "promoted", "stopped")


@dataclass(frozen=True, slots=True)
class LeaderLock:
    """The session advisory lock a controller's decision may only be written under
    (`ab.leader.PostgresLease`): the writing transaction checks that it is still held."""

    session_pid: int
    """Backend pid of the lease's own connection."""
    key: int
    """The advisory lock key (a signed 64-bit integer)."""


class ExperimentStoreError(RuntimeError):
    """Experiment storage failed (unreachable, bad migration, unreadable state file)."""


class LeaseLostError(ExperimentStoreError):
    """A decision was not written: the writer no longer holds the controller's lease."""


@dataclass(frozen=True, slots=True)
class ExperimentState:
    """What the controller or an operator decided about one experiment."""

    experiment: str
    status: Status
    weights: Mapping[str, float] | None = None
    """Traffic weights per variant replacing the configured ones; None keeps the config's."""
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One row of the audit log."""

    id: int
    experiment: str
    decision: str
    reason: str
    evidence: Mapping[str, Any]
    decided_at: datetime


class StateStore(Protocol):
    """Where experiment state and its audit log live (Postgres or a JSON file)."""

    async def load_states(self) -> dict[str, ExperimentState]:
        """The current state of every experiment that has one."""
        ...

    async def record_decision(
        self,
        state: ExperimentState,
        decision: str,
        reason: str,
        evidence: Mapping[str, Any],
        *,
        leader: LeaderLock | None = None,
    ) -> DecisionRecord:
        """Stores the new state and its audit row together; with `leader`, only while that
        lock is held (else `LeaseLostError`, nothing written)."""
        ...

    async def decisions(self, experiment: str) -> list[DecisionRecord]:
        """The audit log of one experiment, oldest first."""
        ...


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The experiment store's migrations in `directory`, by version.

    Raises:
        ExperimentStoreError: a file name does not match `NNN_name.sql` or a version repeats.
    """
    try:
        return schema.load_migrations(directory)
    except schema.MigrationError as exc:
        raise ExperimentStoreError(str(exc)) from exc


async def migrate(pool: asyncpg.Pool, migrations: Sequence[Migration] | None = None) -> list[int]:
    """Applies the feature store's pending migrations, then the ones not yet in
    `ab_schema_migrations`; returns the versions of the latter.

    Each schema in one transaction under its advisory lock: concurrent callers queue, later
    ones do nothing.

    Raises:
        ExperimentStoreError: Postgres failed; the failing schema's migrations were not applied.
    """
    todo = load_migrations() if migrations is None else migrations
    try:
        async with pool.acquire() as connection:
            # The analysis joins the feature store's `events`, and the sidecar may start before
            # any gateway has created it. One transaction per schema: one lock held at a time.
            async with connection.transaction():
                await feature_postgres.apply_migrations(
                    connection, feature_postgres.load_migrations()
                )
            async with connection.transaction():
                return await schema.apply_migrations(
                    connection, todo, "ab_schema_migrations", _MIGRATION_LOCK
                )
    except (*_ERRORS, FeatureStoreError) as exc:
        raise ExperimentStoreError(f"postgres: migration failed: {exc!r}") from exc


async def open_pool(settings: PostgresSettings, max_size: int | None = None) -> asyncpg.Pool:
    """An asyncpg pool for `settings` with the ab schema (and the feature store schema it reads)
    migrated. Close it with `close()`.

    Raises:
        ExperimentStoreError: Postgres is unreachable or a migration failed.
    """
    password = settings.password.get_secret_value() if settings.password else None
    try:
        pool = await asyncpg.create_pool(
            settings.dsn,
            password=password,
            min_size=1,
            max_size=max_size if max_size is not None else min(settings.pool_size, 4),
            timeout=settings.timeout_s,
            command_timeout=max(settings.timeout_s, 30.0),  # analysis queries scan a lot
        )
    except _ERRORS as exc:
        raise ExperimentStoreError(f"postgres: cannot connect: {exc!r}") from exc
    try:
        await migrate(pool)
    except BaseException:
        await pool.close()
        raise
    return pool


@contextlib.asynccontextmanager
async def _connection(pool: asyncpg.Pool, operation: str) -> AsyncIterator[Any]:
    try:
        async with pool.acquire() as connection:
            yield connection
    except _ERRORS as exc:
        raise ExperimentStoreError(f"postgres: {operation} failed: {exc!r}") from exc


_INSERT_EXPOSURES = """
INSERT INTO exposures (request_id, user_id, experiment, variant, model_version, item_ids, ts,
                       assignment_probability, new_item_ids)
SELECT r.request_id, r.user_id, r.experiment, r.variant, r.model_version,
       string_to_array(r.item_ids, chr(31)), r.ts, r.assignment_probability,
       string_to_array(r.new_item_ids, chr(31))
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::timestamptz[], $8::float8[], $9::text[])
     AS r(request_id, user_id, experiment, variant, model_version, item_ids, ts,
          assignment_probability, new_item_ids)
ON CONFLICT (request_id, experiment) DO NOTHING
"""
# Item lists travel joined by the ASCII unit separator: unnest cannot take a ragged text[][]
# and item ids never contain control characters (the API validates them).
_ITEM_SEPARATOR = "\x1f"


class PostgresExposureSink:
    """`ab.exposures.ExposureSink` writing to the `exposures` table: one `INSERT ... SELECT
    FROM unnest(...) ON CONFLICT (request_id, experiment) DO NOTHING` per batch, so a retried
    batch changes nothing. The pool is borrowed: its owner closes it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def write(self, batch: Sequence[Exposure]) -> None:
        """Stores the batch idempotently by (request id, experiment).

        Raises:
            ExperimentStoreError: Postgres failed (the recorder retries the batch).
        """
        if not batch:
            return
        async with _connection(self._pool, "write exposures") as connection:
            await connection.execute(
                _INSERT_EXPOSURES,
                [e.request_id for e in batch],
                [e.user_id for e in batch],
                [e.experiment for e in batch],
                [e.variant for e in batch],
                [e.model_version for e in batch],
                [_ITEM_SEPARATOR.join(e.item_ids) for e in batch],
                [e.timestamp for e in batch],
                [e.assignment_probability for e in batch],
                [_ITEM_SEPARATOR.join(e.new_item_ids) for e in batch],
            )

    async def counts(self, experiment: str) -> dict[str, int]:
        """Exposures per variant of `experiment`."""
        async with _connection(self._pool, "count exposures") as connection:
            rows = await connection.fetch(
                "SELECT variant, count(*) AS n FROM exposures WHERE experiment = $1"
                " GROUP BY variant",
                experiment,
            )
        return {row["variant"]: int(row["n"]) for row in rows}


def _state_from_row(row: Mapping[str, Any]) -> ExperimentState:
    weights = row["weights"]
    return ExperimentState(
        experiment=row["experiment"],
        status=row["status"],
        weights=None if weights is None else {k: float(v) for k, v in json.loads(weights).items()},
        updated_at=row["updated_at"],
    )


# A bigint advisory lock shows in pg_locks as classid (high 32 bits), objid (low 32 bits) and
# objsubid 1.
_HOLDS_LOCK = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND pid = $1
      AND classid = $2::bigint::oid AND objid = $3::bigint::oid AND objsubid = 1
)
"""


def _lock_args(leader: LeaderLock) -> tuple[int, int, int]:
    unsigned = leader.key & 0xFFFF_FFFF_FFFF_FFFF
    return leader.session_pid, unsigned >> 32, unsigned & 0xFFFF_FFFF


class PostgresStateStore:
    """`StateStore` on the `experiment_state` and `decisions` tables (pool borrowed)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def load_states(self) -> dict[str, ExperimentState]:
        async with _connection(self._pool, "read experiment state") as connection:
            rows = await connection.fetch(
                "SELECT experiment, status, weights::text AS weights, updated_at"
                " FROM experiment_state"
            )
        return {row["experiment"]: _state_from_row(row) for row in rows}

    async def record_decision(
        self,
        state: ExperimentState,
        decision: str,
        reason: str,
        evidence: Mapping[str, Any],
        *,
        leader: LeaderLock | None = None,
    ) -> DecisionRecord:
        """Stores the state and its audit row in one transaction.

        Raises:
            LeaseLostError: `leader` is given and its session no longer holds the lock
                (checked inside the writing transaction, so a leader that lost its lease
                after its last check writes nothing).
            ExperimentStoreError: Postgres failed.
        """
        weights = None if state.weights is None else json.dumps(dict(state.weights))
        async with (
            _connection(self._pool, "record decision") as connection,
            connection.transaction(),
        ):
            if leader is not None and not await connection.fetchval(
                _HOLDS_LOCK, *_lock_args(leader)
            ):
                raise LeaseLostError(
                    f"decision on {state.experiment} not written: session {leader.session_pid}"
                    " no longer holds the controller lease"
                )
            await connection.execute(
                """
                INSERT INTO experiment_state (experiment, status, weights, updated_at)
                VALUES ($1, $2, $3::jsonb, $4)
                ON CONFLICT (experiment) DO UPDATE
                SET status = EXCLUDED.status, weights = EXCLUDED.weights,
                    updated_at = EXCLUDED.updated_at
                """,
                state.experiment,
                state.status,
                weights,
                state.updated_at,
            )
            row = await connection.fetchrow(
                """
                INSERT INTO decisions (experiment, decision, reason, evidence, decided_at)
                VALUES ($1, $2, $3, $4::jsonb, $5)
                RETURNING id
                """,
                state.experiment,
                decision,
                reason,
                json.dumps(evidence, default=str),
                state.updated_at,
            )
        return DecisionRecord(
            int(row["id"]), state.experiment, decision, reason, evidence, state.updated_at
        )

    async def decisions(self, experiment: str) -> list[DecisionRecord]:
        async with _connection(self._pool, "read decisions") as connection:
            rows = await connection.fetch(
                "SELECT id, experiment, decision, reason, evidence::text AS evidence, decided_at"
                " FROM decisions WHERE experiment = $1 ORDER BY decided_at, id",
                experiment,
            )
        return [
            DecisionRecord(
                int(r["id"]),
                r["experiment"],
                r["decision"],
                r["reason"],
                json.loads(r["evidence"]),
                r["decided_at"],
            )
            for r in rows
        ]


class JsonStateStore:
    """`StateStore` in a JSON file (embedded profile): `{experiment: {status, weights,
    updated_at}}`, replaced atomically (write to a temporary file, then rename) so a reader
    sees the old file or the new one; the audit log goes to `<file>.decisions.jsonl`.

    Several gateway processes of one machine share the file (an admin call lands in any of
    them): a decision is read, numbered and written under an exclusive lock on
    `<file>.lock` (flock), so two processes deciding at once never lose one another's write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.audit_path = path.with_name(path.name + ".decisions.jsonl")
        self.lock_path = path.with_name(path.name + ".lock")
        self._lock = asyncio.Lock()

    def _read(self) -> dict[str, ExperimentState]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ExperimentStoreError(f"cannot read {self.path}: {exc}") from exc
        try:
            raw = json.loads(text)
            return {
                name: ExperimentState(
                    experiment=name,
                    status=entry["status"],
                    weights=None
                    if entry.get("weights") is None
                    else {k: float(v) for k, v in entry["weights"].items()},
                    updated_at=datetime.fromisoformat(entry["updated_at"]),
                )
                for name, entry in raw.items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ExperimentStoreError(f"{self.path}: invalid experiment state: {exc}") from exc

    async def load_states(self) -> dict[str, ExperimentState]:
        return await asyncio.to_thread(self._read)

    def _write(self, state: ExperimentState, record: DecisionRecord) -> None:
        states = self._read()
        states[state.experiment] = state
        payload = {
            name: {
                "status": s.status,
                "weights": None if s.weights is None else dict(s.weights),
                "updated_at": s.updated_at.isoformat(),
            }
            for name, s in sorted(states.items())
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        os.replace(tmp, self.path)
        with self.audit_path.open("a", encoding="utf-8") as audit:
            audit.write(json.dumps(_record_json(record), default=str) + "\n")

    async def record_decision(
        self,
        state: ExperimentState,
        decision: str,
        reason: str,
        evidence: Mapping[str, Any],
        *,
        leader: LeaderLock | None = None,
    ) -> DecisionRecord:
        # `leader` is unused here: the embedded profile's lease (`ab.leader.FileLease`) is a
        # flock on one machine, whose holder cannot lose it while alive.
        del leader

        def decide() -> DecisionRecord:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.lock_path.open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                previous = self._decisions(state.experiment)
                record = DecisionRecord(
                    len(previous) + 1,
                    state.experiment,
                    decision,
                    reason,
                    evidence,
                    state.updated_at,
                )
                self._write(state, record)
            return record

        async with self._lock:
            return await asyncio.to_thread(decide)

    async def decisions(self, experiment: str) -> list[DecisionRecord]:
        return await asyncio.to_thread(self._decisions, experiment)

    def _decisions(self, experiment: str) -> list[DecisionRecord]:
        try:
            lines = self.audit_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            raw = json.loads(line)
            if raw["experiment"] == experiment:
                out.append(
                    DecisionRecord(
                        int(raw["id"]),
                        raw["experiment"],
                        raw["decision"],
                        raw["reason"],
                        raw["evidence"],
                        datetime.fromisoformat(raw["decided_at"]),
                    )
                )
        return out


def _record_json(record: DecisionRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "experiment": record.experiment,
        "decision": record.decision,
        "reason": record.reason,
        "evidence": dict(record.evidence),
        "decided_at": record.decided_at.isoformat(),
    }
