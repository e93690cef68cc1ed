"""Purchase histories: per-user derived state computed once and replaced when that user's
purchases are recorded, equal to the NumPy concatenation it replaced."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np

from feature_service.catalogue import ItemCatalogue
from feature_service.events import Event, EventType
from feature_service.history import NO_PURCHASES, PurchaseHistories
from tests import numpy_reference as reference

T0 = datetime(2011, 10, 1, tzinfo=UTC)


def _catalogue(n: int = 6) -> ItemCatalogue:
    ids = np.array([f"I{i}" for i in range(n)], dtype=object)
    return ItemCatalogue(
        item_ids=ids,
        titles=ids.copy(),
        price=np.ones(n),
        category=np.zeros(n, dtype=np.int16),
        subcategory=ids.copy(),
        available=np.ones(n, dtype=bool),
        popularity=np.ones(n, dtype=np.float32),
        category_names=("all",),
        position={item: i for i, item in enumerate(ids)},
    )


def _histories() -> PurchaseHistories:
    # Snapshot: user a bought items 3, 1, 3 (oldest first); user b bought item 0.
    return PurchaseHistories(
        user_ids=np.array(["a", "b"], dtype=object),
        offsets=np.array([0, 3, 4], np.int64),
        positions=np.array([3, 1, 3, 0], np.int32),
        timestamps=np.array([10.0, 20.0, 30.0, 5.0]),
        quantities=np.ones(4, np.float32),
        unit_prices=np.full(4, 2.0, np.float32),
        countries={"a": "United Kingdom"},
        catalogue=_catalogue(),
        time_offset_s=0.0,
    )


def _purchase(event_id: str, user: str, item: str, minutes: int) -> Event:
    return Event(
        event_id=event_id,
        type=EventType.PURCHASE,
        user_id=user,
        item_id=item,
        request_id="",
        timestamp=T0 + timedelta(minutes=minutes),
        quantity=2,
        revenue=5.0,
        currency="GBP",
    )


def test_state_is_kept_until_the_users_next_purchase() -> None:
    histories = _histories()
    first = histories.purchases("a")
    assert histories.purchases("a") is first  # not rebuilt per call
    assert first.recent_items.tolist() == [3, 1]
    other = histories.purchases("b")

    histories.record([_purchase("e1", "a", "I5", 1), _purchase("e2", "a", "I1", 2)])
    after = histories.purchases("a")
    assert after is not first
    assert histories.purchases("b") is other  # another user's state is untouched
    recorded = [
        (5, (T0 + timedelta(minutes=1)).timestamp(), 2.0, 2.5),
        (1, (T0 + timedelta(minutes=2)).timestamp(), 2.0, 2.5),
    ]
    want = reference.history(first.history, recorded)
    for name in ("positions", "timestamps", "quantities", "unit_prices"):
        got_column, want_column = getattr(after.history, name), getattr(want, name)
        np.testing.assert_array_equal(got_column, want_column)
        assert got_column.dtype == want_column.dtype
    assert after.recent_items.tolist() == [1, 5, 3]
    np.testing.assert_array_equal(after.recent_items, reference.recent_items(want, 200))
    assert histories.history("a") is after.history

    # A replayed batch adds nothing and keeps the state; unknown items are skipped.
    histories.record([_purchase("e1", "a", "I5", 1), _purchase("e3", "a", "nope", 3)])
    assert len(histories.purchases("a").history.positions) == 5


def test_new_users_and_users_known_only_from_events() -> None:
    histories = _histories()
    assert histories.purchases("nobody") is NO_PURCHASES
    histories.record([_purchase("n1", "new", "I2", 0)])
    fresh = histories.purchases("new")
    assert fresh.history.positions.tolist() == [2]
    assert fresh.recent_items.tolist() == [2]


def test_purchases_recorded_from_another_thread_are_seen() -> None:
    histories = _histories()
    histories.purchases("a")
    batches = [[_purchase(f"t{i}-{j}", "a", f"I{j % 6}", i) for j in range(5)] for i in range(40)]
    threads = [threading.Thread(target=histories.record, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for _ in range(200):
        histories.purchases("a")
    for thread in threads:
        thread.join()
    assert len(histories.purchases("a").history.positions) == 3 + 200
