"""Pure stage functions: filtering, business rules, budgets."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from recsys.v1 import recommendation_pb2 as pb

from feature_service.catalogue import CURRENCY, ItemCatalogue
from gateway.deadline import Budget
from gateway.errors import DeadlineExceeded, InvalidArgument
from gateway.stages.candidates import candidate_count
from gateway.stages.filter import filter_candidates
from gateway.stages.rank import FallbackRanker, PredictionCache, sorted_median
from gateway.stages.rerank import cap_per_category, diversify, truncate
from gateway.stages.respond import ResponseBuilder
from gateway.stages.types import Candidates
from gateway.stages.validate import Limits, validate_recommend

LIMITS = Limits(
    max_recommend_request_bytes=65_536,
    max_events_request_bytes=1_048_576,
    max_exclude_items=500,
    max_events_per_batch=500,
    max_event_future_skew=timedelta(minutes=5),
)


def _candidates(*positions: int) -> Candidates:
    n = len(positions)
    return Candidates(
        np.asarray(positions, dtype=np.int32), np.linspace(1.0, 0.1, n, dtype=np.float32)
    )


def test_filter_drops_blocked_and_unavailable_keeping_order() -> None:
    available = np.array([True, True, False, True, True, True])
    kept = filter_candidates(_candidates(5, 2, 4, 0, 1), np.array([4], dtype=np.int32), available)
    assert kept.positions.tolist() == [5, 0, 1]
    without_stock_rule = filter_candidates(_candidates(5, 2, 4), np.array([], np.int32), None)
    assert without_stock_rule.positions.tolist() == [5, 2, 4]


def test_cap_per_category_keeps_first_items_of_each_category() -> None:
    category = np.array([0, 0, 1, 0, 1, 2], dtype=np.int16)
    capped = cap_per_category(_candidates(0, 1, 2, 3, 4, 5), category, 1)
    assert capped.positions.tolist() == [0, 2, 5]
    capped2 = cap_per_category(_candidates(3, 2, 1, 0, 4), category, 2)
    assert capped2.positions.tolist() == [3, 2, 1, 4]
    assert cap_per_category(_candidates(0, 1), category, 0).positions.tolist() == [0, 1]


def test_truncate_and_candidate_count() -> None:
    assert truncate(_candidates(3, 2, 1), 2).positions.tolist() == [3, 2]
    assert truncate(_candidates(3), 5).positions.tolist() == [3]
    assert candidate_count(500, 10, 30) == 500
    assert candidate_count(500, 100, 600) == 700


def test_fallback_ranker_blends_retrieval_and_popularity() -> None:
    popularity = np.zeros(10, np.float32)
    popularity[[7, 8, 9]] = [100.0, 0.0, 10.0]
    items = Candidates(np.array([7, 8, 9], np.int32), np.array([0.2, 0.9, 0.5], np.float32))
    ranking = FallbackRanker(popularity).rank(items, reason="RANKER_TIMEOUT")
    # 7: 0 + 1.0; 8: 1.0 + 0; 9: 0.43 + 0.52 -> halves: 0.5, 0.5, 0.475 (stable order)
    assert ranking.items.positions.tolist() == [7, 8, 9]
    assert ranking.items.scores.tolist() == pytest.approx([0.5, 0.5, 0.4747], abs=1e-3)
    assert ranking.degraded_reasons == ("RANKER_TIMEOUT",)
    assert ranking.model_version == "popularity"
    # Equal retrieval scores: popularity decides.
    flat = Candidates(np.array([8, 9, 7], np.int32), np.zeros(3, np.float32))
    assert FallbackRanker(popularity).rank(flat).items.positions.tolist() == [7, 9, 8]


def test_prediction_cache_keys_on_model_version_and_candidates() -> None:
    cache = PredictionCache(size=10, ttl_s=60)
    positions = np.array([1, 2, 3], np.int32)
    key = PredictionCache.key("ranker_v2", 1, "u", 5, (1, 1, 0, 12), positions)
    cache.put(key, np.array([0.1, 0.2, 0.3], np.float32))
    assert cache.get(key) is not None
    # Another version, another candidate list or a longer history never hit.
    assert cache.get(PredictionCache.key("ranker_v2", 2, "u", 5, (1, 1, 0, 12), positions)) is None
    assert cache.get(PredictionCache.key("ranker_v3", 1, "u", 5, (1, 1, 0, 12), positions)) is None
    assert cache.get(PredictionCache.key("ranker_v2", 1, "u", 6, (1, 1, 0, 12), positions)) is None
    other = np.array([1, 3, 2], np.int32)
    assert cache.get(PredictionCache.key("ranker_v2", 1, "u", 5, (1, 1, 0, 12), other)) is None
    disabled = PredictionCache(size=0, ttl_s=60)
    disabled.put(key, np.zeros(3, np.float32))
    assert disabled.get(key) is None


def test_budget_uses_the_tighter_deadline() -> None:
    assert Budget.for_request(None, 0.1).remaining() == pytest.approx(0.1, abs=0.01)
    assert Budget.for_request(0.02, 0.1).remaining() == pytest.approx(0.02, abs=0.01)
    expired = Budget(0.0, now=time.monotonic() - 1)
    with pytest.raises(DeadlineExceeded, match="before stage rank"):
        expired.check("rank")


def test_diversify_trades_relevance_for_variety() -> None:
    category = np.array([0, 0, 0, 1, 2], dtype=np.int16)
    items = Candidates(
        np.arange(5, dtype=np.int32), np.array([1.0, 0.95, 0.9, 0.5, 0.4], np.float32)
    )
    assert diversify(items, category, 0.0, 5).positions.tolist() == [0, 1, 2, 3, 4]
    # With weight, the second pick leaves category 0 for the best item of another category.
    assert diversify(items, category, 0.5, 3).positions.tolist() == [0, 3, 4]
    # A small weight only reorders when relevance is close.
    assert diversify(items, category, 0.05, 5).positions.tolist()[:3] == [0, 1, 2]
    # Scores travel with their items.
    picked = diversify(items, category, 0.5, 3)
    assert picked.scores.tolist() == pytest.approx([1.0, 0.5, 0.4])


def test_diversify_with_embeddings() -> None:
    vectors = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    items = Candidates(np.arange(3, dtype=np.int32), np.array([1.0, 0.9, 0.8], np.float32))
    category = np.zeros(3, dtype=np.int16)
    chosen = diversify(items, category, 0.5, 2, embeddings=vectors)
    assert chosen.positions.tolist() == [0, 2]


def _catalogue() -> ItemCatalogue:
    ids = np.array(["A1", "B2", "C3"], dtype=object)
    return ItemCatalogue(
        item_ids=ids,
        titles=np.array(["mug", "lamp", "card"], dtype=object),
        price=np.array([2.5, 10.0, 0.85]),
        category=np.array([0, 1, 0], dtype=np.int16),
        subcategory=np.array(["cups", "lights", "paper"], dtype=object),
        available=np.ones(3, dtype=bool),
        popularity=np.ones(3, dtype=np.float32),
        category_names=("kitchen", "home"),
        position={item: i for i, item in enumerate(ids)},
    )


def test_response_builder_fills_items_in_order_with_their_metadata() -> None:
    builder = ResponseBuilder(_catalogue(), cache_size=2)
    items = Candidates(np.array([2, 0, 1], np.int32), np.array([0.9, 0.5, 0.25], np.float32))

    response = builder.build(items, "req-1", "ranker_v2/3", None, ("SHORT_RESPONSE",), 4.5)
    again = builder.build(items.take(np.array([1])), "req-2", "ranker_v2/3", None, (), 1.0)

    assert [r.item_id for r in response.recommendations] == ["C3", "A1", "B2"]
    assert [r.score for r in response.recommendations] == pytest.approx([0.9, 0.5, 0.25])
    card = response.recommendations[0].metadata
    assert (card.title, card.currency, card.category) == ("card", CURRENCY, "kitchen")
    assert list(card.category_path) == ["kitchen", "paper"]
    assert card.price == pytest.approx(0.85)
    assert response.degraded and list(response.degraded_reasons) == [
        pb.DegradedReason.DEGRADED_REASON_SHORT_RESPONSE
    ]
    assert (response.request_id, response.model_version) == ("req-1", "ranker_v2/3")
    # Templates are copied: the second response's score does not leak into the first.
    assert [(r.item_id, r.score) for r in again.recommendations] == [("A1", 0.5)]
    assert response.recommendations[1].score == 0.5 and not again.degraded


@pytest.mark.parametrize("size", [1, 2, 7, 550])
def test_sorted_median_equals_numpy_median(size: int) -> None:
    rng = np.random.default_rng(size)
    scores = rng.random(size, dtype=np.float32)
    scores[: size // 3] = scores[0]  # ties
    expected = float(np.median(scores))
    for order in (np.argsort(-scores, kind="stable"), np.argsort(scores)):
        assert sorted_median(scores, order) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("offset", "skewed"),
    [
        (timedelta(0), False),
        (timedelta(hours=23), False),
        (-timedelta(hours=23), False),
        (timedelta(days=1, seconds=1), True),
        (-timedelta(days=2), True),
        (-timedelta(days=3650), True),
    ],
)
def test_client_time_is_used_within_a_day_of_the_server_clock(
    offset: timedelta, skewed: bool
) -> None:
    # "now" is injected: the rule is about the distance between two clocks, not the calendar.
    now = datetime(2031, 7, 4, 9, 15, tzinfo=UTC)
    request = pb.RecommendRequest(user_id="17850")
    request.context.client_time.FromDatetime(now + offset)
    context = validate_recommend(request, LIMITS, now).context
    assert context.client_clock_skewed is skewed
    assert context.time == (now if skewed else now + offset)


def test_missing_client_time_is_the_server_clock_and_invalid_one_is_refused() -> None:
    now = datetime(2031, 7, 4, 9, 15, tzinfo=UTC)
    context = validate_recommend(pb.RecommendRequest(user_id="17850"), LIMITS, now).context
    assert (context.time, context.client_clock_skewed) == (now, False)
    request = pb.RecommendRequest(user_id="17850")
    request.context.client_time.nanos = -1
    with pytest.raises(InvalidArgument, match="client_time: is not a valid timestamp"):
        validate_recommend(request, LIMITS, now)


def test_generated_request_ids_are_time_ordered_and_a_callers_id_is_kept() -> None:
    # Exposure rows are keyed by request id: ids generated in order append to the key's
    # B-tree instead of landing at random leaves (benchmarks/exposure_keys.py).
    now = datetime(2031, 7, 4, 9, 15, tzinfo=UTC)
    ids = [
        validate_recommend(pb.RecommendRequest(user_id="17850"), LIMITS, now).request_id
        for _ in range(2_000)
    ]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 32 and i[12] == "7" for i in ids)  # UUIDv7, hex without dashes
    given = pb.RecommendRequest(user_id="17850", request_id="checkout-42")
    assert validate_recommend(given, LIMITS, now).request_id == "checkout-42"
