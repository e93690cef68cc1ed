"""Single-flight loading: at most one loader per key in a process (cache stampede protection).

The first caller for a key starts the loader as a task; later callers for the same key await
that task instead of starting their own. Callers await through `asyncio.shield`, so a caller
that gives up (the gateway's stage timeout) does not cancel the load the others still want, and
the result still fills the caches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _retrieve(task: asyncio.Task[object]) -> None:
    # Mark the outcome as seen: when every waiter gave up, nobody else will look at it.
    if not task.cancelled():
        task.exception()


class SingleFlight(Generic[K, V]):
    """Shares in-flight loads by key."""

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[dict[K, V]]] = {}

    def __len__(self) -> int:
        """Keys being loaded now."""
        return len(self._tasks)

    async def do(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """`load()`'s result, from the load already running for `key` if there is one."""

        async def one() -> dict[K, V]:
            return {key: await load()}

        task = self._tasks.get(key)
        if task is None:
            task = self._start([key], one())
        return (await asyncio.shield(task))[key]

    def forget(self, key: K) -> None:
        """Later callers for `key` start a fresh load (the running one still finishes)."""
        self._tasks.pop(key, None)

    async def close(self) -> None:
        """Cancels the loads in flight and waits for them to end."""
        tasks = set(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    def _start(self, keys: list[K], loader: Awaitable[dict[K, V]]) -> asyncio.Task[dict[K, V]]:
        async def run() -> dict[K, V]:
            return await loader

        task = asyncio.create_task(run())
        for key in keys:
            self._tasks[key] = task

        def done(finished: asyncio.Task[dict[K, V]]) -> None:
            for key in keys:
                if self._tasks.get(key) is finished:
                    del self._tasks[key]
            _retrieve(finished)

        task.add_done_callback(done)
        return task
