"""Several gateways on one machine (`make run` with `serving.processes` > 1), in one test
process: they bind one port only when asked to (SO_REUSEPORT), and what one of them records
reaches the other's in-memory state (recent purchases and the ranker's purchase histories)
through the shared event log. test_runner.py runs the same as real processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from recsys.v1 import recommendation_pb2 as pb

from gateway.config import Settings
from gateway.resources import open_resources
from gateway.server import start_server
from infra.local.ports import free_port, free_port_block
from tests.conftest import async_stub, running_gateway, user_event

pytestmark = pytest.mark.integration


async def test_only_gateways_that_ask_for_it_share_a_port(
    make_settings: Callable[..., Settings],
) -> None:
    port = str(free_port("127.0.0.1"))
    shared = make_settings(SERVING__PORT=port, SERVING__REUSE_PORT="true")
    async with open_resources(shared) as resources:
        first = await start_server(shared, resources)
        second = await start_server(shared, resources)
        try:
            assert first.port == second.port == int(port)
        finally:
            await second.drain_and_stop(0)
            await first.drain_and_stop(0)
    exclusive = make_settings(SERVING__PORT=port)
    async with open_resources(exclusive) as resources:
        first = await start_server(exclusive, resources)
        try:
            # A process already on the port (a stale gateway, say) is an error, not a partner.
            with pytest.raises(OSError, match="cannot bind"):
                await start_server(exclusive, resources)
        finally:
            await first.drain_and_stop(0)


async def test_a_purchase_recorded_by_one_gateway_reaches_the_others_features(
    make_settings: Callable[..., Settings], models: Path
) -> None:
    settings = make_settings(
        # Histories come with the ranker; Triton itself is not needed here (nothing listens).
        MODEL__REPOSITORY_DIR=str(models),
        MODEL__RANKER__TRITON_GRPC_URL=f"127.0.0.1:{free_port_block(3) + 1}",
        FEATURE_STORE__EMBEDDED__TAIL_INTERVAL_S="0.05",
    )
    user, item = "17850", "22423"
    async with (
        running_gateway(settings) as (_, channel),
        open_resources(settings) as sibling,
    ):
        assert sibling.histories is not None
        lines_before = len(sibling.histories.history(user).positions)
        reply = await async_stub(channel).RecordEvents(
            pb.RecordEventsRequest(
                events=[
                    user_event(
                        "sibling-1",
                        pb.EVENT_TYPE_PURCHASE,
                        item_id=item,
                        quantity=3,
                        revenue=38.25,
                        currency="GBP",
                    )
                ]
            )
        )
        assert reply.accepted == 1
        position = sibling.catalogue.position[item]
        for _ in range(100):
            history = sibling.histories.history(user)
            if len(history.positions) > lines_before:
                break
            await asyncio.sleep(0.05)
        assert len(history.positions) == lines_before + 1
        assert history.positions[-1] == position
        assert history.unit_prices[-1] == pytest.approx(12.75)
        features = await sibling.store.user_features(user, datetime.now(UTC))
        assert position in features.recent_purchased
