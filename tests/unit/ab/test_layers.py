"""Layered experiments: one arm per layer, layers split users independently, and the arms
of one user decide the model and the surface together."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError
from scipy.stats import chi2_contingency

from ab.assignment import assign, assign_layers
from ab.config import ABTestingSettings, ExperimentConfig, VariantConfig
from ab.routing import RoutingTable
from ab.store import ExperimentState

RANKER = ExperimentConfig(
    name="ranker_v2_vs_v3",
    salt="ranker_salt",
    variants=(
        VariantConfig(name="control", model="ranker_v2", weight=0.5),
        VariantConfig(name="treatment", model="ranker_v3", weight=0.5),
    ),
)
SURFACE = ExperimentConfig(
    name="mixed_vs_buy_again",
    salt="surface_salt",
    layer="surface",
    variants=(
        VariantConfig(name="control", weight=0.5, serve_surface=False),
        VariantConfig(name="treatment", weight=0.5),
    ),
)
USERS = [f"user{i}" for i in range(20_000)]


def test_a_user_is_in_one_experiment_of_every_layer() -> None:
    second_ranker = RANKER.model_copy(update={"name": "ranker_later", "salt": "later_salt"})
    for user in USERS[:2000]:
        found = assign_layers((RANKER, second_ranker, SURFACE), user)
        # both layers cover everyone; in the main layer the first experiment takes the user
        assert [a.experiment for a in found] == ["ranker_v2_vs_v3", "mixed_vs_buy_again"]
        assert found[0] == assign(RANKER, user) and found[1] == assign(SURFACE, user)
        assert assign_layers((RANKER, second_ranker, SURFACE), user) == found  # sticky


def test_within_a_layer_coverage_splits_users_between_experiments() -> None:
    half = RANKER.model_copy(update={"coverage": 0.5})
    other = RANKER.model_copy(update={"name": "other", "salt": "other_salt"})
    names = Counter(
        tuple(a.experiment for a in assign_layers((half, other), user)) for user in USERS
    )
    assert set(names) == {("ranker_v2_vs_v3",), ("other",)}
    assert names[("ranker_v2_vs_v3",)] / len(USERS) == pytest.approx(0.5, abs=0.02)


def test_layers_split_independently() -> None:
    table = Counter(
        (found[0].variant, found[1].variant)
        for user in USERS
        if len(found := assign_layers((RANKER, SURFACE), user)) == 2
    )
    assert sum(table.values()) == len(USERS)
    counts = [[table[(r, s)] for s in ("control", "treatment")] for r in ("control", "treatment")]
    # every ranker arm sees both surface arms in the same proportions
    assert chi2_contingency(counts).pvalue > 0.001
    assert min(min(row) for row in counts) > 0.2 * len(USERS)


def test_arms_decide_model_and_surface_together() -> None:
    table = RoutingTable((RANKER, SURFACE))
    seen = set()
    for user in USERS[:400]:
        arms = table.arms(user)
        assert arms is not None and len(arms.arms) == 2
        ranker, surface = (a.assignment for a in arms.arms)
        assert arms.primary == ranker
        assert arms.serve_surface is surface.serve_surface
        assert arms.primary.experiment_id.startswith("ranker_v2_vs_v3_")
        assert all(a.probability == 1.0 for a in arms.arms)
        seen.add((arms.primary.model, arms.serve_surface))
    assert seen == {(m, s) for m in ("ranker_v2", "ranker_v3") for s in (True, False)}


def test_a_user_only_in_the_surface_layer_gets_the_default_model() -> None:
    table = RoutingTable((RANKER, SURFACE), {RANKER.name: ExperimentState(RANKER.name, "stopped")})
    arms = table.arms("17850")
    assert arms is not None and [a.assignment.experiment for a in arms.arms] == [SURFACE.name]
    assert arms.primary.experiment == SURFACE.name and arms.primary.model is None
    stopped = RoutingTable((SURFACE,), {SURFACE.name: ExperimentState(SURFACE.name, "stopped")})
    assert stopped.arms("17850") is None


def test_a_rollback_in_one_layer_leaves_the_other() -> None:
    table = RoutingTable(
        (RANKER, SURFACE),
        {SURFACE.name: ExperimentState(SURFACE.name, "rolled_back", {"control": 1.0})},
    )
    for user in USERS[:300]:
        arms = table.arms(user)
        assert arms is not None and not arms.serve_surface
        assert arms.primary == assign(RANKER, user)


def test_two_layers_may_not_decide_the_same_thing() -> None:
    other_surface = SURFACE.model_copy(update={"name": "s2", "salt": "s2", "layer": "more"})
    with pytest.raises(
        ValidationError, match="layers 'surface' and 'more' both decide the surface"
    ):
        ABTestingSettings(experiments=(RANKER, SURFACE, other_surface))
    model_in_surface = SURFACE.model_copy(
        update={"variants": (*SURFACE.variants[:1], VariantConfig(name="t", model="m", weight=0.5))}
    )
    with pytest.raises(ValidationError, match="layers 'main' and 'surface' both decide the model"):
        ABTestingSettings(experiments=(RANKER, model_in_surface))
    ABTestingSettings(experiments=(RANKER, SURFACE))  # one owner each


def test_salts_are_unique() -> None:
    same_salt = SURFACE.model_copy(update={"salt": RANKER.salt})
    with pytest.raises(ValidationError, match="experiment salts repeat"):
        ABTestingSettings(experiments=(RANKER, same_salt))
