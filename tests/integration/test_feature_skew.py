"""No training/serving skew, on real data: the ranker features the offline pipeline computes for
a user at a moment equal those the gateway serves after the same purchases were replayed
through its online path (snapshot + events recorded as RecordEvents purchases)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_service.catalogue import ItemCatalogue
from feature_service.definitions import Context, ItemArrays, assemble_features, build_user_state
from feature_service.events import Event, EventType
from feature_service.history import PurchaseHistories
from gateway.stages.features import RankingFeatures
from gateway.stages.types import Candidates, RequestContext
from tests.conftest import DATA_DIR
from triton_models.dataset import history_of, load_data

pytestmark = pytest.mark.integration


def test_offline_and_online_features_agree(build_dir: Path, tmp_path: Path) -> None:
    data = load_data(build_dir / "data", DATA_DIR)
    events = data.events
    # Busy real customers, a query moment in the test period, a replay window of 60 days.
    moment = data.split.test_start + pd.Timedelta(days=3, hours=10)
    replay_from = moment - pd.Timedelta(days=60)
    before = events.loc[events["timestamp"] < moment]
    users = before.groupby("user_id").size().sort_values(ascending=False).index[:5].tolist()

    # The online side: a snapshot that ends at `replay_from` ...
    snapshot = tmp_path / "data"
    snapshot.mkdir()
    events.loc[events["timestamp"] < replay_from].drop(columns=["position"]).to_parquet(
        snapshot / "events.parquet", index=False
    )
    shutil.copy(build_dir / "data" / "users.parquet", snapshot / "users.parquet")
    catalogue = ItemCatalogue.load(build_dir / "data")
    histories = PurchaseHistories.load(snapshot, catalogue, time_offset_s=0.0)
    # ... then the purchases up to the moment, replayed as RecordEvents purchase events.
    replay = before.loc[before["timestamp"] >= replay_from]
    columns = zip(
        replay["user_id"].tolist(),
        replay["item_id"].tolist(),
        replay["timestamp"].dt.tz_localize("UTC").dt.to_pydatetime().tolist(),
        replay["quantity"].tolist(),
        replay["unit_price"].tolist(),
        strict=True,
    )
    histories.record(
        [
            Event(
                event_id=f"replay-{i}",
                type=EventType.PURCHASE,
                user_id=str(user),
                item_id=str(item),
                request_id="",
                timestamp=when,
                quantity=int(quantity),
                revenue=float(quantity) * float(price),
                currency="GBP",
            )
            for i, (user, item, when, quantity, price) in enumerate(columns)
        ]
    )
    items = ItemArrays.from_catalogue(catalogue)
    online = RankingFeatures(histories, items)

    rng = np.random.default_rng(0)
    for user in users:
        lines = before.loc[before["user_id"] == user]
        country = str(lines["country"].iloc[-1])
        candidates = rng.choice(len(catalogue), 300, replace=False).astype(np.int32)
        scores = rng.random(300).astype(np.float32)
        when = moment.to_pydatetime()
        # Offline, exactly as triton_models.dataset builds training rows.
        state = build_user_state(history_of(lines), items, when, histories.country(user))
        offline = assemble_features(
            state, items, candidates, Context(time=when, country=country), scores
        )
        # Online, as the gateway's rank stage builds them for a request at that moment.
        served = online.build(
            user,
            histories.history(user),
            Candidates(candidates, scores),
            RequestContext(
                device=0,
                page=0,
                locale="",
                country=country,
                session_id="",
                time=pd.Timestamp(when).tz_localize("UTC").to_pydatetime(),
            ),
        )
        assert len(histories.history(user).positions) == len(lines)
        np.testing.assert_allclose(served, offline, rtol=1e-5, atol=1e-5)
