"""The compiled pipeline (feature_service/kernels.py behind the stages and the shared feature
definitions) against the NumPy implementations it replaced (tests/numpy_reference.py), on the
real catalogue, embeddings and purchase histories: same candidates, filter, features, order and
re-rank, bit for bit, for hundreds of real customers. The one difference is the order of items
with equal retrieval scores (the data has exact ties): NumPy's argpartition left it to chance,
the kernel orders them by position; both return the same scores in the same order."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from feature_service import kernels
from feature_service.catalogue import ItemCatalogue
from feature_service.definitions import (
    Context,
    ItemArrays,
    build_user_state,
    merge_candidates,
    top_k_exact,
)
from feature_service.history import PurchaseHistories
from feature_service.surfaces import Scored, discovery_slots_for
from gateway.stages.candidates import (
    HISTORY_CANDIDATES,
    CandidateRetriever,
    PopularCandidates,
    RetrievalIndex,
)
from gateway.stages.features import RankingFeatures
from gateway.stages.filter import filter_candidates
from gateway.stages.rerank import cap_per_category, diversify, truncate
from gateway.stages.types import Candidates, RequestContext
from tests import numpy_reference as reference

pytestmark = pytest.mark.integration
POPULAR = 50
WHEN = datetime(2011, 12, 1, 15, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def world(models: Path) -> tuple[ItemCatalogue, PurchaseHistories, RetrievalIndex]:
    build = models.parents[1]
    catalogue = ItemCatalogue.load(build / "data")
    histories = PurchaseHistories.load(build / "data", catalogue, time_offset_s=0.0)
    index = RetrievalIndex.load(build / "retrieval", catalogue, -1, 50_000)
    return catalogue, histories, index


def _users(index: RetrievalIndex, count: int) -> list[str]:
    known = list(index.user_row)
    return [*known[:: max(1, len(known) // count)][:count], "no-such-customer"]


def test_retrieval_and_training_top_k_match_numpy(
    world: tuple[ItemCatalogue, PurchaseHistories, RetrievalIndex],
) -> None:
    _, histories, index = world
    users = _users(index, 400)[:-1]
    rows = np.asarray([index.user_row[u] for u in users])
    owned = [histories.purchases(u).recent_items for u in users]
    # The training builder's batch call: every user, own items excluded.
    scores = index.user_vectors[rows] @ index.item_vectors.T
    for row, positions in enumerate(owned):
        scores[row, positions] = -np.inf
    got = top_k_exact(index.user_vectors[rows], index.item_vectors, 200, exclude=owned)
    want = reference.top_k_exact(index.user_vectors[rows], index.item_vectors, 200, exclude=owned)
    for row in range(len(users)):
        _assert_same_up_to_ties(got[row], want[row], scores[row])
    # The evaluation's call without exclusions, and k beyond the catalogue.
    scores = index.user_vectors[rows[:20]] @ index.item_vectors.T
    got = top_k_exact(index.user_vectors[rows[:20]], index.item_vectors, 10_000)
    want = reference.top_k_exact(index.user_vectors[rows[:20]], index.item_vectors, 10_000)
    for row in range(20):
        _assert_same_up_to_ties(got[row], want[row], scores[row])


def _assert_same_up_to_ties(
    got: npt.NDArray[np.int32], want: npt.NDArray[np.int32], scores: npt.NDArray[np.float32]
) -> None:
    """Same scores in the same order; the same item wherever its score is not tied; tied
    items by position."""
    np.testing.assert_array_equal(scores[got], scores[want])
    values, counts = np.unique(scores, return_counts=True)
    untied = ~np.isin(scores[want], values[counts > 1])
    np.testing.assert_array_equal(got[untied], want[untied])
    same_score = scores[got][1:] == scores[got][:-1]
    assert (got[1:][same_score] > got[:-1][same_score]).all()


def test_serving_pipeline_matches_numpy_stage_by_stage(
    world: tuple[ItemCatalogue, PurchaseHistories, RetrievalIndex],
) -> None:
    catalogue, histories, index = world
    items = ItemArrays.from_catalogue(catalogue)
    popular = PopularCandidates(catalogue)
    retriever = CandidateRetriever(popular, index, POPULAR, cache_size=1000)
    features = RankingFeatures(histories, items)
    rng = np.random.default_rng(7)
    context = RequestContext(
        device=1, page=1, locale="en-GB", country="GB", session_id="", time=WHEN
    )
    compiled_before = {name: len(getattr(kernels, name).signatures) for name in _KERNELS}
    bought_candidates = 0
    for user in _users(index, 300):
        purchases = histories.purchases(user)
        history = purchases.history
        past = purchases.recent_items[:HISTORY_CANDIDATES]
        np.testing.assert_array_equal(past, reference.recent_items(history, HISTORY_CANDIDATES))

        # candidates (the second lookup comes from the gateway's retrieval cache, read-only)
        got, cached = retriever.retrieve_cached(user, past, 500)
        again, cached_again = retriever.retrieve_cached(user, past, 500)
        assert (cached, cached_again) == (False, True) and again is got
        assert not got.positions.flags.writeable and not got.scores.flags.writeable
        row = index.user_row.get(user)
        if row is None:
            nearest = np.empty(0, np.int32)
            vector = np.zeros(index.user_vectors.shape[1], np.float32)
        else:
            vector = index.user_vectors[row]
            nearest = top_k_exact(vector[None, :], index.item_vectors, 500, [past])[0]
            row_scores = (vector[None, :] @ index.item_vectors.T)[0]
            row_scores[past] = -np.inf
            _assert_same_up_to_ties(
                nearest,
                reference.nearest(index.user_vectors, index.item_vectors, row, 500, past),
                row_scores,
            )
        want = reference.retrieve(
            nearest, past, popular.positions[:POPULAR], index.item_vectors, vector
        )
        _assert_same(got, want)

        # filter: recently viewed items (some of them candidates) and the stock rule
        viewed = np.unique(
            np.concatenate([rng.choice(got.positions, 20), rng.choice(len(catalogue), 20)])
        ).astype(np.int32)
        kept = filter_candidates(got, viewed, catalogue.available)
        _assert_same(kept, reference.filter_candidates(got, viewed, catalogue.available))
        _assert_same(
            filter_candidates(got, viewed, None), reference.filter_candidates(got, viewed, None)
        )

        # ranking features: the gateway's against the NumPy assembly of the same state
        x = features.build(user, history, kept, context)
        state = build_user_state(history, items, float("inf"), histories.country(user))
        want_x = reference.assemble_features(
            state,
            items,
            kept.positions,
            Context(time=WHEN, device=1, page=1, country="GB"),
            kept.scores,
        )
        np.testing.assert_array_equal(x, want_x)
        bought_candidates += int(np.isin(kept.positions, state.item_positions).sum())
        # which candidates are new to the customer (the surfaces and the served-items metric)
        np.testing.assert_array_equal(
            kernels.contained(kept.positions, past), np.isin(kept.positions, past)
        )

        # order by the ranker's scores (rounded so that ties occur), then the re-rank rules
        scores = np.round(rng.random(len(kept)), 2).astype(np.float32)
        by_score = kernels.order_by_score(scores)
        ranked = Candidates(kept.positions[by_score], scores[by_score])
        _assert_same(ranked, reference.order(kept, scores))
        # MIXED's slots from both heads' probabilities (discovery scores rounded too)
        new = kept.positions[~kernels.contained(kept.positions, state.item_positions)]
        discovery = np.round(rng.random(len(new)) * 0.3, 2).astype(np.float32)
        discover = new[kernels.order_by_score(discovery)]
        for weight in (0.0, 0.08, 0.5):
            slots = discovery_slots_for(
                ranked.positions,
                discover,
                state.item_positions,
                10,
                Scored(kept.positions, scores * 0.01),
                Scored(new, discovery),
                weight,
            )
            none, values = reference.mixed_pick_values(
                ranked.positions,
                discover,
                state.item_positions,
                10,
                (kept.positions, scores * 0.01),
                (new, discovery),
                weight,
            )
            assert values[slots - none] == pytest.approx(values.max(), abs=1e-12)
        for embeddings in (index.unit_item_vectors, None):
            for weight, count, cap in ((0.3, 30, 4), (0.7, 10, 0), (0.0, 30, 2)):
                got_items = truncate(
                    cap_per_category(
                        diversify(ranked, catalogue.category, weight, count, embeddings),
                        catalogue.category,
                        cap,
                    ),
                    10,
                )
                want_items = reference.truncate(
                    reference.cap_per_category(
                        reference.diversify(ranked, catalogue.category, weight, count, embeddings),
                        catalogue.category,
                        cap,
                    ),
                    10,
                )
                _assert_same(got_items, want_items)
    assert bought_candidates > 1000  # the cross features were exercised, not only defaults
    # The serving path used only the signatures compiled at import: no compile on a request.
    assert {name: len(getattr(kernels, name).signatures) for name in _KERNELS} == compiled_before


def test_merge_matches_numpy_on_real_sources(
    world: tuple[ItemCatalogue, PurchaseHistories, RetrievalIndex],
) -> None:
    _, histories, index = world
    popular = np.arange(0, 3000, 7, dtype=np.int32)
    for user in _users(index, 100)[:-1]:
        past = histories.purchases(user).recent_items
        nearest = top_k_exact(
            index.user_vectors[index.user_row[user]][None, :], index.item_vectors, 300
        )[0]
        np.testing.assert_array_equal(
            merge_candidates(nearest, past, popular),
            reference.merge_candidates(nearest, past, popular),
        )


_KERNELS = (
    "top_k_rows",
    "first_occurrences",
    "keep_allowed",
    "fill_features",
    "order_by_score",
    "greedy_mmr",
    "first_per_category",
    "contained",
    "best_discovery_picks",
)


def _assert_same(got: Candidates, want: Candidates) -> None:
    np.testing.assert_array_equal(got.positions, want.positions)
    np.testing.assert_array_equal(got.scores, want.scores)
    assert got.positions.dtype == want.positions.dtype
    assert got.scores.dtype == want.scores.dtype
