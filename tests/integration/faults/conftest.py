"""Fixtures of the fault tests (issue #10): real Redis and Postgres that a test may stop, a
gateway process that a test may SIGKILL, and a latency-injecting TCP proxy.

Every server and process started here listens on 127.0.0.1 only and is stopped at the end of
the test (or session) that started it, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc
from recsys.v1 import recommendation_pb2_grpc as pb_grpc

from gateway.config import Settings
from gateway.resources import Resources, open_resources
from gateway.server import start_server
from infra.local.health import grpc_serving, poll_until
from infra.local.logs import log_tail
from infra.local.ports import free_port
from tests.conftest import LOCAL_CONFIG, REPO, async_stub

# The stores' session servers (started on first use, restarted by `servers_up` when a test
# stopped one); imported so this folder's tests share their start/stop helpers.
from tests.integration.stores.conftest import (  # noqa: F401
    postgres_server,
    redis_server,
    servers_up,
)

READY_TIMEOUT_S = 60.0


class GatewayProcess:
    """One `python -m gateway.main` process on a free port; `kill()` is SIGKILL, `stop()` is
    SIGTERM (graceful drain), both idempotent."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self._env = {**os.environ, **env, "RECSYS__SERVING__PORT": str(self.port)}
        self.log_path = log_path
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        """host:port of the gRPC server."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Starts the process and returns the seconds until health said SERVING.

        Raises:
            AssertionError: the process exited or was not ready in time (with its log tail).
        """
        started = time.monotonic()
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "gateway.main", "--config", str(LOCAL_CONFIG)],
            cwd=REPO,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        process = self._process
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def serving() -> bool:
                assert process.poll() is None, f"gateway exited:\n{self.log_tail()}"
                return grpc_serving(health)

            assert poll_until(
                serving, timeout_s, interval_s=0.1
            ), f"gateway not SERVING within {timeout_s:.0f} s:\n{self.log_tail()}"
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: no drain, no close, no flush (a crash or an OOM kill)."""
        self._end(signal.SIGKILL)

    def stop(self) -> int | None:
        """SIGTERM, then wait for the drain; returns the exit code (None if never started)."""
        return self._end(signal.SIGTERM)

    def _end(self, sig: int) -> int | None:
        code = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.send_signal(sig)
            try:
                code = self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                code = self._process.wait(timeout=30)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log_tail(self) -> str:
        """The end of the process's log."""
        return log_tail(self.log_path)


def gateway_env(build_dir: Path, work: Path) -> dict[str, str]:
    """Overrides for a gateway process: private logs under `work`, no Triton (a repository
    that does not exist), no rate limit, no metrics port."""
    return {
        "RECSYS__MODEL__ARTIFACTS_DIR": str(build_dir),
        "RECSYS__MODEL__REPOSITORY_DIR": str(work / "no-model-repository"),
        "RECSYS__FEATURE_STORE__EMBEDDED__EVENT_LOG_PATH": str(work / "events.sqlite3"),
        "RECSYS__AB_TESTING__EXPOSURE_LOG_PATH": str(work / "exposures.sqlite3"),
        "RECSYS__SERVING__RATE_LIMIT": "",
        "RECSYS__MONITORING__METRICS__ENABLED": "false",
    }


@pytest.fixture
def gateway_processes() -> Iterator[list[GatewayProcess]]:
    """A list the test appends its gateway processes to; every one is killed afterwards."""
    processes: list[GatewayProcess] = []
    yield processes
    for process in processes:
        process.kill()


class LatencyProxy:
    """A TCP proxy on 127.0.0.1 that delays every chunk, in each direction, by `latency_s`
    (settable while running). Runs on the test's event loop."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self.latency_s = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Binds a free port (`port`)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stops listening and cuts every proxied connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                if self.latency_s > 0:
                    await asyncio.sleep(self.latency_s)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


@contextlib.asynccontextmanager
async def latency_proxy(host: str, port: int) -> AsyncIterator[LatencyProxy]:
    """A started `LatencyProxy` in front of host:port, closed on exit."""
    proxy = LatencyProxy(host, port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@contextlib.asynccontextmanager
async def in_process_gateway(
    settings: Settings,
) -> AsyncIterator[tuple[Resources, pb_grpc.RecommendationServiceAsyncStub]]:
    """The real asyncio server on a free port with its resources (metrics registry included)
    and a stub on a channel to it; drained and closed on exit."""
    async with open_resources(settings) as resources:
        server = await start_server(settings, resources)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                yield resources, async_stub(channel)
        finally:
            await server.drain_and_stop(0)


def store_overrides(redis_url: str, postgres_dsn: str, work: Path) -> dict[str, str]:
    """`make_settings` overrides for the redis_postgres backend: L1 users expire after 50 ms (so
    reads reach Redis), Redis is retried 200 ms after a failure, the spool is private and
    replayed every 200 ms."""
    return {
        "FEATURE_STORE__BACKEND": "redis_postgres",
        "FEATURE_STORE__REDIS__URL": redis_url,
        "FEATURE_STORE__REDIS__RETRY_AFTER_S": "0.2",
        "FEATURE_STORE__POSTGRES__DSN": postgres_dsn,
        "FEATURE_STORE__POSTGRES__POOL_SIZE": "4",
        "FEATURE_STORE__L1__USER_TTL_S": "0.05",
        "FEATURE_STORE__SPOOL_PATH": str(work / "event-spool.jsonl"),
        "FEATURE_STORE__SPOOL_REPLAY_INTERVAL_S": "0.2",
    }
