"""The client helper's pure parts (recsys.client): its service config, call policy and event
builder. Calls through real channels are in tests/integration/test_client_package.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from recsys.client import CallPolicy, channel_options, recommend_request, service_config, user_event
from recsys.v1 import recommendation_pb2 as pb


def test_both_calls_retry_unavailable_only() -> None:
    config = service_config(CallPolicy(max_attempts=4, initial_backoff_s=0.05, max_backoff_s=0.5))
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": "recsys.v1.RecommendationService"}]
    assert method["retryPolicy"] == {
        "maxAttempts": 4,
        "initialBackoff": "0.05s",
        "maxBackoff": "0.5s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    # Deadlines go with each call (grpc/grpc#40633), never into the service config.
    assert "timeout" not in method
    assert config["retryThrottling"] == {"maxTokens": 10, "tokenRatio": 0.1}


def test_one_attempt_means_no_retry_policy() -> None:
    assert "methodConfig" not in service_config(CallPolicy(max_attempts=1))


def test_channel_options_carry_the_config() -> None:
    options = dict(channel_options(CallPolicy()))
    assert json.loads(str(options["grpc.service_config"])) == service_config(CallPolicy())
    assert options["grpc.enable_retries"] == 1


def test_policy_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError, match="max_attempts must be 1 to 5, got 6"):
        CallPolicy(max_attempts=6)
    with pytest.raises(ValueError, match="recommend_timeout_s must be > 0, got 0"):
        CallPolicy(recommend_timeout_s=0)
    with pytest.raises(ValueError, match="0 < initial_backoff_s <= max_backoff_s"):
        CallPolicy(initial_backoff_s=0.5, max_backoff_s=0.1)


def test_recommend_request_leaves_num_items_unset_by_default() -> None:
    assert not recommend_request("17850").HasField("num_items")
    context = pb.RequestContext(device=pb.DEVICE_MOBILE)
    request = recommend_request("17850", 3, context=context, exclude_item_ids=["85123A"])
    assert request.num_items == 3 and request.context == context
    assert list(request.exclude_item_ids) == ["85123A"]


def test_user_event_stores_the_instant() -> None:
    at = datetime(2011, 12, 9, 12, 50, tzinfo=timezone(timedelta(hours=1)))
    event = user_event("e1", pb.EVENT_TYPE_PURCHASE, "17850", "85123A", at, quantity=2)
    assert event.timestamp.ToDatetime(tzinfo=UTC) == at
    assert (event.event_id, event.quantity) == ("e1", 2)


def test_user_event_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="at: needs a timezone"):
        user_event("e", pb.EVENT_TYPE_CLICK, "17850", "85123A", datetime(2011, 12, 9))
