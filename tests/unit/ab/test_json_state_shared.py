"""The embedded experiment state file shared by several gateway processes: decisions made at
once through different processes (here: separate `JsonStateStore`s, whose in-process locks do
not see each other, writing from parallel threads) are all kept, numbered without gaps."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ab.store import ExperimentState, JsonStateStore


async def test_concurrent_decisions_from_sibling_processes_are_all_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    siblings = [JsonStateStore(path) for _ in range(4)]
    await asyncio.gather(
        *(
            store.record_decision(
                ExperimentState(f"exp{i}", "running", {"control": 0.5, "treatment": 0.5}),
                "start",
                "test",
                {"round": round_},
            )
            for round_ in range(5)
            for i, store in enumerate(siblings)
        )
    )
    states = await JsonStateStore(path).load_states()
    assert sorted(states) == ["exp0", "exp1", "exp2", "exp3"]
    for i in range(4):
        records = await siblings[0].decisions(f"exp{i}")
        assert [r.id for r in records] == [1, 2, 3, 4, 5]
