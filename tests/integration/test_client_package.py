"""The `recsys-client` distribution (protos/pyproject.toml): its wheel, installed into a clean
virtual environment with only the wheel and its declared dependencies at their floors, calls a
running gateway; the helper's service config retries UNAVAILABLE and sets default deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from recsys.client import AsyncRecommendationClient, CallPolicy, user_event
from recsys.v1 import recommendation_pb2 as pb
from recsys.v1 import recommendation_pb2_grpc as pb_grpc

from gateway.config import Settings
from gateway.server import RunningServer
from tests.conftest import REPO, running_gateway

pytestmark = pytest.mark.integration

Gateway = tuple[RunningServer, grpc.aio.Channel]
UV = REPO / ".tools" / "uv" / "bin" / "uv"
PROBE = Path(__file__).with_name("client_wheel_probe.py")


def _uv(*args: str | Path, cwd: Path) -> str:
    # Outside the repository and with no project environment: uv must not pick up the service's.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    done = subprocess.run(
        [str(UV), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"uv {args[0]} failed: {done.stderr.strip()}"
    return done.stdout


def _floors(wheel: Path) -> dict[str, str]:
    """The `name>=version` floors the wheel declares."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    return dict(re.findall(r"^Requires-Dist: ([a-z-]+)[^>\n]*>=([\d.]+)", text, re.MULTILINE))


def _clean_environment(tmp_path: Path) -> tuple[Path, Path]:
    """Builds the wheel and installs it, with its dependencies pinned to their floors, into a
    new virtual environment; returns (its python, the wheel)."""
    dist = tmp_path / "dist"
    _uv("build", "--wheel", "--out-dir", dist, REPO / "protos", cwd=tmp_path)
    (wheel,) = dist.glob("recsys_client-*-py3-none-any.whl")
    floors = _floors(wheel)
    assert set(floors) == {"grpcio", "protobuf"}, floors
    venv = tmp_path / "venv"
    _uv("venv", "--python", sys.executable, venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    pins = [f"{name}=={version}" for name, version in sorted(floors.items())]
    _uv("pip", "install", "--python", python, wheel, *pins, cwd=tmp_path)
    return python, wheel


async def test_client_wheel_calls_a_gateway_from_a_clean_environment(
    gateway: Gateway, tmp_path: Path
) -> None:
    server, _ = gateway
    target = f"127.0.0.1:{server.port}"
    python, wheel = await asyncio.to_thread(_clean_environment, tmp_path)
    installed = await asyncio.to_thread(_uv, "pip", "freeze", "--python", python, cwd=tmp_path)
    names = {re.split(r"==| @ ", line)[0].lower() for line in installed.splitlines()}
    # The wheel and what it declares (typing-extensions comes with grpcio), nothing of the
    # service's: no numpy, pydantic, grpcio-reflection, ...
    assert names == {"recsys-client", "grpcio", "protobuf", "typing-extensions"}, installed
    probe = await asyncio.to_thread(
        subprocess.run,
        [str(python), str(PROBE), target],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert Path(seen["package_file"]).is_relative_to(tmp_path / "venv"), seen["package_file"]
    assert len(seen["items"]) == 3 and seen["request_id"] == "wheel-probe"
    assert seen["events"] == [1, 0, 0, 1]
    assert seen["invalid"] == ["INVALID_ARGUMENT", "num_items: must be between 1 and 100, got 0"]
    assert seen["async_items"] == 2
    cli = await asyncio.to_thread(
        subprocess.run,
        [str(python), "-m", "recsys.client", "--target", target, "recommend", "17850", "-n", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert len(json.loads(cli.stdout)["recommendations"]) == 2
    # The installed distribution's version, from its metadata (not the source tree's fallback).
    version = await asyncio.to_thread(
        subprocess.run,
        [str(python), "-m", "recsys.client", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.returncode == 0, version.stderr
    declared = tomllib.loads((REPO / "protos" / "pyproject.toml").read_text())["project"]
    assert version.stdout == f"python -m recsys.client {declared['version']}\n"
    assert wheel.stat().st_size > 0


class _FlakyRecommender(pb_grpc.RecommendationServiceServicer):
    """Answers UNAVAILABLE to the first `failures` calls, or sleeps `delay_s` before answering."""

    def __init__(self, failures: int = 0, delay_s: float = 0.0) -> None:
        self.failures = failures
        self.delay_s = delay_s
        self.calls = 0

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.RecommendResponse:
        self.calls += 1
        if self.calls <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        await asyncio.sleep(self.delay_s)
        return pb.RecommendResponse(request_id=request.request_id)

    async def RecordEvents(
        self, request: pb.RecordEventsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.RecordEventsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used here")


@contextlib.asynccontextmanager
async def _serve(servicer: _FlakyRecommender) -> AsyncIterator[str]:
    server = grpc.aio.server()
    pb_grpc.add_RecommendationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_unavailable_is_retried_within_max_attempts() -> None:
    servicer = _FlakyRecommender(failures=2)
    async with _serve(servicer) as target:
        async with AsyncRecommendationClient(target, policy=CallPolicy(max_attempts=3)) as client:
            reply = await client.recommend("17850", 5, request_id="r1", deadline_s=5.0)
        assert reply.request_id == "r1" and servicer.calls == 3
    servicer = _FlakyRecommender(failures=5)
    async with _serve(servicer) as target:
        async with AsyncRecommendationClient(target, policy=CallPolicy(max_attempts=2)) as client:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.recommend("17850", 5, deadline_s=5.0)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert caught.value.details() == "draining" and servicer.calls == 2


async def test_calls_get_the_policy_deadline_by_default() -> None:
    servicer = _FlakyRecommender(delay_s=2.0)
    async with _serve(servicer) as target:
        policy = CallPolicy(recommend_timeout_s=0.2)
        async with AsyncRecommendationClient(target, policy=policy) as client:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.recommend("17850", 5)
            elapsed = time.monotonic() - started
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.15 < elapsed < 1.5, elapsed


async def test_the_token_reaches_a_protected_gateway(
    make_settings: Callable[..., Settings],
) -> None:
    token = "client-package-token"
    event = user_event("client-token-1", pb.EVENT_TYPE_CLICK, "17850", "85123A", datetime.now(UTC))
    async with running_gateway(make_settings(SERVING__AUTH__TOKEN=token)) as (server, _):
        target = f"127.0.0.1:{server.port}"
        async with AsyncRecommendationClient(target) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await anonymous.record_events([event], deadline_s=5.0)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with AsyncRecommendationClient(target, token=token) as client:
            reply = await client.record_events([event], deadline_s=5.0)
            assert (reply.accepted, reply.duplicates) == (1, 0)
            assert (await client.recommend("17850", 2, deadline_s=5.0)).recommendations
