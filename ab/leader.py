"""The controller's leader lease: one experiment sidecar decides, the others wait their turn.

Every gateway pod runs a sidecar (5-50 with the HPA), and each would evaluate the same
experiments and write the same decisions. Before each evaluation round the controller asks
its lease (`LeaderLease.hold`); only the holder evaluates, the others skip the round and stay
up (metrics served, ready), trying again every round, so one of them takes over within an
interval once the leader is gone.

- `PostgresLease` (production): a session-level advisory lock (`pg_try_advisory_lock`) held
  on a connection of its own, outside the pool, so no pooled query can release it. Postgres
  drops the lock with the session: at once when the leader's process dies (its socket
  closes), and after the TCP keepalive below when its node vanishes. A leader that finds
  its lease connection broken stops evaluating before its next round.
- `FileLease` (embedded single-node profile, where several gateway processes share one
  machine): an exclusive `flock` on a file next to the JSON state; the kernel releases it
  when the holding process exits, however it exits.

Who leads is visible as `recsys_experiment_controller_leader` (1 on the leader, 0 on
followers) and as one log line at each change.

The controller asks again just before it writes a decision, so a leader whose session ended
during an evaluation writes nothing, and on Postgres the writing transaction itself checks in
`pg_locks` that the lease's session still holds the lock (`PostgresLease.lock`,
`ab.store.LeaderLock`): a leader that lost it after that check writes nothing either.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Protocol

import asyncpg

from ab.sidecar_settings import SidecarSettings
from ab.store import POSTGRES_ERRORS, LeaderLock
from feature_service.config import PostgresSettings

_log = logging.getLogger(__name__)

CONTROLLER_LOCK_KEY = 0x7265_6373_7973_0B01
"""Advisory lock key of the experiment controller (distinct from the migration locks)."""
_ERRORS = POSTGRES_ERRORS
# How long Postgres keeps a vanished leader's session (and lock): idle 10 s, then 3 probes
# 5 s apart. A process that dies on a live node closes its socket and frees the lock at once.
_KEEPALIVE = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "application_name": "recsys-ab-leader",
}


class LeaderLease(Protocol):
    """A lease at most one process holds at a time."""

    holder: str
    """Who this process is in logs (host and pid)."""

    async def hold(self) -> bool:
        """Takes the lease if it is free, or checks that this process still has it; True
        while this process leads. Never raises: an unreachable store means not leading."""
        ...

    @property
    def lock(self) -> LeaderLock | None:
        """What a decision's write checks is still held (None: the write does not check)."""
        ...

    async def release(self) -> None:
        """Gives the lease up (a follower's release does nothing)."""
        ...


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _log_change(leading: bool, holder: str, lease: str, why: str = "") -> None:
    _log.warning(
        json.dumps(
            {
                "event": "controller_leader" if leading else "controller_follower",
                "holder": holder,
                "lease": lease,
                "reason": why,
            },
            sort_keys=True,
        )
    )


class PostgresLease:
    """`LeaderLease` on a Postgres session advisory lock (see the module docstring).

    Args:
        settings: the Postgres the experiments live in.
        key: the advisory lock key; sidecars with the same key share one leader.
    """

    def __init__(self, settings: PostgresSettings, key: int = CONTROLLER_LOCK_KEY) -> None:
        self._settings = settings
        self._key = key
        self._connection: asyncpg.Connection | None = None
        self._leading = False
        self.holder = _holder()

    async def hold(self) -> bool:
        timeout = self._settings.timeout_s
        try:
            if self._connection is not None and self._connection.is_closed():
                # The session ended (Postgres restarted or terminated it): so did the lock.
                await self._drop("lease session ended")
            connection = await self._connect()
            if self._leading:
                # The lock lives as long as this session: a live session still holds it.
                await connection.fetchval("SELECT 1", timeout=timeout)
                return True
            got = bool(
                await connection.fetchval(
                    "SELECT pg_try_advisory_lock($1)", self._key, timeout=timeout
                )
            )
        except _ERRORS as exc:
            if not self._leading:
                _log.warning("leader lease: lease connection failed: %r", exc)
            await self._drop(f"lease connection failed: {exc!r}")
            return False
        if got:
            self._leading = True
            _log_change(True, self.holder, "postgres advisory lock")
        return got

    @property
    def lock(self) -> LeaderLock | None:
        """The advisory lock on the lease's session while leading, else None."""
        if not self._leading or self._connection is None:
            return None
        return LeaderLock(self._connection.get_server_pid(), self._key)

    async def _connect(self) -> asyncpg.Connection:
        if self._connection is not None:
            return self._connection
        settings = self._settings
        password = settings.password.get_secret_value() if settings.password else None
        self._connection = await asyncpg.connect(
            settings.dsn,
            password=password,
            timeout=settings.timeout_s,
            server_settings=_KEEPALIVE,
        )
        return self._connection

    async def _drop(self, why: str) -> None:
        """Forgets the session (and with it any lock it held)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.terminate()
        if self._leading:
            self._leading = False
            _log_change(False, self.holder, "postgres advisory lock", why)

    async def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            # Closing the session releases the lock too; unlocking first says so at once.
            if self._leading:
                await connection.execute("SELECT pg_advisory_unlock($1)", self._key)
            await connection.close(timeout=self._settings.timeout_s)
        except _ERRORS:
            connection.terminate()
        if self._leading:
            self._leading = False
            _log_change(False, self.holder, "postgres advisory lock", "released")


class FileLease:
    """`LeaderLease` as an exclusive `flock` on `path` (one machine, several processes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None
        self.holder = _holder()

    @property
    def lock(self) -> LeaderLock | None:
        """None: a flock on one machine cannot be lost by a live holder."""
        return None

    async def hold(self) -> bool:
        if self._file is not None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("ab")
        except OSError as exc:
            _log.warning("cannot open the lease file %s: %s", self.path, exc)
            return False
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another process holds it
            handle.close()
            return False
        self._file = handle
        _log_change(True, self.holder, str(self.path))
        return True

    async def release(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()  # closing the last descriptor releases the flock
            _log_change(False, self.holder, str(self.path), "released")


def lease_for(settings: SidecarSettings) -> LeaderLease:
    """The lease of the configured deployment: the advisory lock in the experiments' Postgres,
    or a lock file next to the embedded profile's JSON state."""
    if settings.uses_postgres:
        return PostgresLease(settings.feature_store.postgres)
    state = settings.ab_testing.controller.state_file
    return FileLease(state.with_name(state.name + ".leader"))


@contextlib.asynccontextmanager
async def leased(lease: LeaderLease) -> AsyncIterator[LeaderLease]:
    """Yields `lease` and releases it on exit, even when the exit is a cancellation."""
    try:
        yield lease
    finally:
        await asyncio.shield(lease.release())
