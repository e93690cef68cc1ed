"""`gateway.server.serve`, the process entry point: serves until SIGTERM, then drains."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable

import grpc
import pytest
from recsys.v1 import recommendation_pb2 as pb

from gateway.config import Settings
from gateway.server import serve
from tests.conftest import async_stub

pytestmark = pytest.mark.integration


async def test_serve_freezes_startup_objects_answers_and_stops_on_sigterm(
    make_settings: Callable[..., Settings],
) -> None:
    answered: list[pb.RecommendResponse] = []
    frozen: list[int] = []

    async def on_started(port: int) -> None:
        # Start-up objects are out of the cyclic collector's reach (no long full collections).
        frozen.append(gc.get_freeze_count())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            answered.append(
                await async_stub(channel).Recommend(pb.RecommendRequest(user_id="17850"))
            )
        os.kill(os.getpid(), signal.SIGTERM)  # serve's handler turns it into a drain

    try:
        await asyncio.wait_for(serve(make_settings(), on_started), timeout=60)
    finally:
        gc.unfreeze()  # the test process goes on; let its collector see everything again
    assert frozen and frozen[0] > 10_000
    assert len(answered) == 1 and len(answered[0].recommendations) == 10
