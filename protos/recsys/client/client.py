"""Blocking and asyncio clients of `recsys.v1.RecommendationService`.

Each owns one channel carrying the service config of `service_config.py` (retries on
UNAVAILABLE) and puts the policy's deadline on every call that does not set its own. Errors are
gRPC's own: a failed call raises `grpc.RpcError` (blocking) or `grpc.aio.AioRpcError`
(asyncio) with the status code and the server's message, e.g. INVALID_ARGUMENT
"num_items: must be between 1 and 100, got 0".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, cast

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from recsys.client.service_config import CallPolicy, channel_options
from recsys.v1 import recommendation_pb2 as pb
from recsys.v1 import recommendation_pb2_grpc as pb_grpc

Metadata = tuple[tuple[str, str], ...]


def recommend_request(
    user_id: str,
    n: int | None = None,
    *,
    context: pb.RequestContext | None = None,
    exclude_item_ids: Sequence[str] = (),
    request_id: str = "",
) -> pb.RecommendRequest:
    """A Recommend request; `n` unset leaves the number of items to the server's default."""
    request = pb.RecommendRequest(
        user_id=user_id, exclude_item_ids=list(exclude_item_ids), request_id=request_id
    )
    if n is not None:
        request.num_items = n
    if context is not None:
        request.context.CopyFrom(context)
    return request


def user_event(
    event_id: str,
    event_type: pb.EventType.ValueType,
    user_id: str,
    item_id: str,
    at: datetime,
    *,
    request_id: str = "",
    quantity: int = 0,
    revenue: float = 0.0,
    currency: str = "",
    position: int = 0,
) -> pb.UserEvent:
    """One event for `record_events`. `event_id` makes it idempotent: keep it when retrying.

    Raises:
        ValueError: `at` has no timezone (the server stores instants, not wall-clock times).
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("at: needs a timezone (e.g. datetime.now(timezone.utc))")
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return pb.UserEvent(
        event_id=event_id,
        type=event_type,
        user_id=user_id,
        item_id=item_id,
        timestamp=stamp,
        request_id=request_id,
        quantity=quantity,
        revenue=revenue,
        currency=currency,
        position=position,
    )


def _metadata(token: str | None) -> Metadata | None:
    # RecordEvents needs the bearer token when the server sets one; the other calls ignore it.
    return (("authorization", f"Bearer {token}"),) if token else None


def _options(policy: CallPolicy, options: Sequence[tuple[str, Any]]) -> list[Any]:
    return [*channel_options(policy), *options]


class RecommendationClient:
    """Blocking client; one instance (one channel) may be shared by threads.

    Args:
        target: `host:port` of a gateway or of the load balancer in front of them.
        credentials: TLS credentials (`grpc.ssl_channel_credentials(...)`); plaintext when None.
        token: bearer token sent as `authorization` metadata (`serving.auth` on the server).
        policy: deadlines and retries; `CallPolicy()` when None.
        options: extra gRPC channel options, after the service config's.
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        policy: CallPolicy | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._policy = policy or CallPolicy()
        all_options = _options(self._policy, options)
        self._channel = (
            grpc.insecure_channel(target, options=all_options)
            if credentials is None
            else grpc.secure_channel(target, credentials, options=all_options)
        )
        self._stub = pb_grpc.RecommendationServiceStub(self._channel)
        self._metadata = _metadata(token)

    def recommend(
        self,
        user_id: str,
        n: int | None = None,
        *,
        context: pb.RequestContext | None = None,
        exclude_item_ids: Sequence[str] = (),
        request_id: str = "",
        deadline_s: float | None = None,
    ) -> pb.RecommendResponse:
        """Up to `n` ranked items for `user_id`; `deadline_s` overrides the policy's deadline."""
        request = recommend_request(
            user_id, n, context=context, exclude_item_ids=exclude_item_ids, request_id=request_id
        )
        deadline_s = self._policy.recommend_timeout_s if deadline_s is None else deadline_s
        reply: pb.RecommendResponse = self._stub.Recommend(
            request, timeout=deadline_s, metadata=self._metadata
        )
        return reply

    def record_events(
        self, events: Iterable[pb.UserEvent], *, deadline_s: float | None = None
    ) -> pb.RecordEventsResponse:
        """Stores a batch of events; acknowledged once durable. Safe to repeat after any error."""
        deadline_s = self._policy.record_events_timeout_s if deadline_s is None else deadline_s
        reply: pb.RecordEventsResponse = self._stub.RecordEvents(
            pb.RecordEventsRequest(events=list(events)), timeout=deadline_s, metadata=self._metadata
        )
        return reply

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> RecommendationClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncRecommendationClient:
    """asyncio client (`grpc.aio`); create it inside the event loop that uses it. Arguments as
    `RecommendationClient`'s."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        policy: CallPolicy | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._policy = policy or CallPolicy()
        all_options = _options(self._policy, options)
        self._channel = (
            grpc.aio.insecure_channel(target, options=all_options)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials, options=all_options)
        )
        # The asyncio stub type exists only in the generated type stubs (.pyi).
        self._stub = cast(
            "pb_grpc.RecommendationServiceAsyncStub",
            pb_grpc.RecommendationServiceStub(self._channel),
        )
        self._metadata = _metadata(token)

    async def recommend(
        self,
        user_id: str,
        n: int | None = None,
        *,
        context: pb.RequestContext | None = None,
        exclude_item_ids: Sequence[str] = (),
        request_id: str = "",
        deadline_s: float | None = None,
    ) -> pb.RecommendResponse:
        """Up to `n` ranked items for `user_id`; `deadline_s` overrides the policy's deadline."""
        request = recommend_request(
            user_id, n, context=context, exclude_item_ids=exclude_item_ids, request_id=request_id
        )
        deadline_s = self._policy.recommend_timeout_s if deadline_s is None else deadline_s
        return await self._stub.Recommend(request, timeout=deadline_s, metadata=self._metadata)

    async def record_events(
        self, events: Iterable[pb.UserEvent], *, deadline_s: float | None = None
    ) -> pb.RecordEventsResponse:
        """Stores a batch of events; acknowledged once durable. Safe to repeat after any error."""
        deadline_s = self._policy.record_events_timeout_s if deadline_s is None else deadline_s
        return await self._stub.RecordEvents(
            pb.RecordEventsRequest(events=list(events)), timeout=deadline_s, metadata=self._metadata
        )

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncRecommendationClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
