"""Run by tests/integration/test_client_package.py inside a clean virtual environment holding
only the `recsys-client` wheel and its declared dependencies: calls a running gateway through
the installed package and prints what it saw as one JSON object.

Usage: python client_wheel_probe.py HOST:PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime

import grpc
import recsys
from recsys.client import AsyncRecommendationClient, RecommendationClient, user_event
from recsys.v1 import recommendation_pb2 as pb


async def _async_items(target: str) -> int:
    async with AsyncRecommendationClient(target) as client:
        reply = await client.recommend("17850", 2, deadline_s=5.0)
        return len(reply.recommendations)


def main() -> None:
    target = sys.argv[1]
    seen: dict[str, object] = {"package_file": recsys.__file__}
    with RecommendationClient(target) as client:
        reply = client.recommend("17850", 3, request_id="wheel-probe", deadline_s=5.0)
        seen["items"] = [item.item_id for item in reply.recommendations]
        seen["request_id"] = reply.request_id
        event = user_event(
            "wheel-probe-view-1",
            pb.EVENT_TYPE_PRODUCT_VIEW,
            "17850",
            reply.recommendations[0].item_id,
            datetime.now(UTC),
            request_id=reply.request_id,
        )
        first = client.record_events([event], deadline_s=5.0)
        again = client.record_events([event], deadline_s=5.0)
        seen["events"] = [first.accepted, first.duplicates, again.accepted, again.duplicates]
        try:
            client.recommend("17850", 0, deadline_s=5.0)
        except grpc.RpcError as exc:
            if not isinstance(exc, grpc.Call):
                raise
            seen["invalid"] = [exc.code().name, exc.details()]
    seen["async_items"] = asyncio.run(_async_items(target))
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
