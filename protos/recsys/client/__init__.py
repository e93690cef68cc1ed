"""A typed Python client of the recommendation service (distribution `recsys-client`).

    from recsys.client import RecommendationClient

    with RecommendationClient("127.0.0.1:50051") as client:
        reply = client.recommend("17850", 5)

The generated stubs are in `recsys.v1` (messages in `recommendation_pb2`, stubs in
`recommendation_pb2_grpc`), with type stubs for mypy and pyright.
"""

from recsys.client.client import (
    AsyncRecommendationClient,
    RecommendationClient,
    recommend_request,
    user_event,
)
from recsys.client.service_config import CallPolicy, channel_options, service_config

__all__ = [
    "AsyncRecommendationClient",
    "CallPolicy",
    "RecommendationClient",
    "channel_options",
    "recommend_request",
    "service_config",
    "user_event",
]
