"""A connection that fails while the pool takes it back is a store error (the layered store
then spools the events), not an unhandled one: with Postgres SIGKILLed under load, asyncpg's
reset on release raised InternalClientError and RecordEvents answered INTERNAL. The real
outage is covered by tests/integration/faults/ and benchmarks/chaos_soak.py."""

from __future__ import annotations

from types import TracebackType
from typing import Any, cast

import asyncpg
import pytest

from feature_service.postgres import PostgresStore
from feature_service.store import FeatureStoreError


class _ReleaseFails:
    """What `pool.acquire()` returns: a connection whose release raises `error`."""

    def __init__(self, error: BaseException) -> None:
        self._error = error

    async def __aenter__(self) -> object:
        return object()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        raise self._error


class _Pool:
    def __init__(self, error: BaseException) -> None:
        self._error = error

    def acquire(self) -> _ReleaseFails:
        return _ReleaseFails(self._error)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.InternalClientError("cannot switch to state 15; another operation is in progress"),
        asyncpg.InterfaceError("connection is closed"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
)
async def test_a_failed_release_is_a_store_error(error: BaseException) -> None:
    store = PostgresStore(cast(Any, _Pool(error)))
    with pytest.raises(FeatureStoreError, match="append events failed"):
        async with store._connection("append events"):
            pass
