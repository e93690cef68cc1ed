"""The routing table: decisions applied to the configured experiments, refreshed by a poller."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ab.assignment import assign
from ab.config import ExperimentConfig, VariantConfig
from ab.routing import RoutingPoller, RoutingTable, apply_state
from ab.store import ExperimentState, JsonStateStore

EXP = ExperimentConfig(
    name="exp",
    salt="salt",
    variants=(
        VariantConfig(name="control", model="m2", weight=0.9),
        VariantConfig(name="treatment", model="m3", weight=0.1),
    ),
)
OTHER = ExperimentConfig(
    name="other",
    salt="other",
    variants=(
        VariantConfig(name="a", model="m2", weight=0.5),
        VariantConfig(name="b", model="m4", weight=0.5),
    ),
)
USERS = [f"user{i}" for i in range(3000)]


def _split(table: RoutingTable) -> dict[str, int]:
    counts: dict[str, int] = {}
    for user in USERS:
        routed = table.assign(user)
        key = "none" if routed is None else routed.assignment.experiment_id
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_no_state_routes_as_configured() -> None:
    table = RoutingTable([EXP])
    for user in USERS[:200]:
        routed = table.assign(user)
        assert routed is not None and routed.assignment == assign(EXP, user)
        assert routed.probability == 1.0


def test_rollback_sends_everyone_to_control() -> None:
    table = RoutingTable([EXP])
    changed = table.update(
        {"exp": ExperimentState("exp", "rolled_back", {"control": 1.0, "treatment": 0.0})}
    )
    assert changed
    assert _split(table) == {"exp_control": len(USERS)}


def test_promotion_sends_everyone_to_the_winner() -> None:
    table = RoutingTable(
        [EXP], {"exp": ExperimentState("exp", "promoted", {"control": 0.0, "treatment": 1.0})}
    )
    assert _split(table) == {"exp_treatment": len(USERS)}


def test_stopped_experiment_is_disabled_and_the_next_one_takes_its_users() -> None:
    table = RoutingTable([EXP, OTHER], {"exp": ExperimentState("exp", "stopped")})
    split = _split(table)
    assert set(split) == {"other_a", "other_b"} and sum(split.values()) == len(USERS)
    assert table.experiment("exp") is not None and not table.experiment("exp").enabled  # type: ignore[union-attr]


def test_weight_override_keeps_the_bucket_layout() -> None:
    """Going from 90/10 to 50/50 only moves control users into treatment, never back."""
    before = {u: assign(EXP, u) for u in USERS}
    table = RoutingTable(
        [EXP], {"exp": ExperimentState("exp", "running", {"control": 1, "treatment": 1})}
    )
    [served] = table.experiments
    assert [v.weight for v in served.variants] == [0.5, 0.5]
    moved = 0
    for user in USERS:
        old, new = before[user], table.assign(user)
        assert old is not None and new is not None
        if old.variant == "treatment":
            assert new.assignment.variant == "treatment"
        moved += old.variant != new.assignment.variant
    assert 0.35 * len(USERS) < moved < 0.45 * len(USERS)
    assert _split(table)["exp_treatment"] == pytest.approx(len(USERS) / 2, rel=0.1)


def test_invalid_override_keeps_the_configured_weights() -> None:
    state = ExperimentState("exp", "running", {"control": 0.0, "unknown": 3.0})
    assert apply_state(EXP, state) == EXP


def test_bandit_assignments_carry_their_probability() -> None:
    bandit = EXP.model_copy(update={"decision_policy": "bandit", "coverage": 0.5})
    table = RoutingTable(
        [bandit], {"exp": ExperimentState("exp", "running", {"control": 0.3, "treatment": 0.7})}
    )
    probabilities = {
        r.assignment.variant: r.probability for u in USERS if (r := table.assign(u)) is not None
    }
    assert probabilities == pytest.approx({"control": 0.15, "treatment": 0.35})


class _Source:
    def __init__(self) -> None:
        self.states: dict[str, ExperimentState] = {}
        self.fail = False

    async def load_states(self) -> dict[str, ExperimentState]:
        if self.fail:
            raise ConnectionError("postgres down")
        return dict(self.states)


async def test_poller_applies_new_states_and_survives_failures() -> None:
    source = _Source()
    table = RoutingTable([EXP])
    async with RoutingPoller(table, source, interval_s=0.01) as poller:
        source.states = {"exp": ExperimentState("exp", "stopped")}
        for _ in range(200):
            if table.assign(USERS[0]) is None:
                break
            await asyncio.sleep(0.01)
        assert _split(table) == {"none": len(USERS)}
        source.fail = True
        failures = poller.failures
        for _ in range(200):
            if poller.failures > failures:
                break
            await asyncio.sleep(0.01)
        assert poller.failures > failures
        assert _split(table) == {"none": len(USERS)}  # last known decisions stay


async def test_json_state_file_drives_routing(tmp_path: Path) -> None:
    store = JsonStateStore(tmp_path / "state.json")
    table = RoutingTable([EXP])
    poller = RoutingPoller(table, store, interval_s=60)
    assert await poller.refresh() and _split(table)["exp_treatment"] > 0
    await store.record_decision(
        ExperimentState("exp", "rolled_back", {"control": 1.0, "treatment": 0.0}),
        "rollback",
        "test",
        {"why": "because"},
    )
    assert await poller.refresh()
    assert _split(table) == {"exp_control": len(USERS)}
    [record] = await store.decisions("exp")
    assert record.evidence == {"why": "because"} and record.decision == "rollback"
    (tmp_path / "state.json").write_text("{not json")
    assert not await poller.refresh()  # unreadable: keep the last table
    assert _split(table) == {"exp_control": len(USERS)}
