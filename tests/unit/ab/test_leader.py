"""The embedded profile's leader lease (an exclusive flock that dies with its process) and
the controller under a lease: followers do not evaluate, a lease lost mid-round writes
nothing."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from ab.controller import Controller
from ab.leader import FileLease
from ab.prometheus_metrics import SidecarMetrics
from ab.store import JsonStateStore
from tests.unit.ab.test_controller import NOW, _Sums, arms, experiment, simulated

REPO = Path(__file__).resolve().parents[3]
_WORSE = arms(simulated("control", 3000, 0.10, 0.1, 1), simulated("treatment", 3000, 0.08, 0.1, 2))

# Another sidecar's FileLease, as the kernel sees it (plain fcntl: starts in milliseconds).
_HOLD = """
import fcntl, sys, time
handle = open(sys.argv[1], "ab")
fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("held", flush=True)
time.sleep(60)
"""


async def test_one_holder_at_a_time_and_release_hands_it_on(tmp_path: Path) -> None:
    path = tmp_path / "state.json.leader"
    first, second = FileLease(path), FileLease(path)
    assert await first.hold()
    assert await first.hold()  # still ours
    assert not await second.hold()
    await first.release()
    assert await second.hold()
    assert not await first.hold()
    await second.release()
    await second.release()  # twice is harmless


async def test_a_killed_holder_frees_the_lease(tmp_path: Path) -> None:
    path = tmp_path / "state.json.leader"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLD, str(path), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"held\n"
        lease = FileLease(path)
        assert not await lease.hold()
        holder.send_signal(signal.SIGKILL)
        await asyncio.wait_for(holder.wait(), 10)
        assert await lease.hold()  # the kernel dropped the dead process's lock
        await lease.release()
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()


class _Lease:
    """Answers `hold` from a script (True, False ..., then the last answer again) and stops
    the controller after `rounds` questions."""

    holder = "test"
    lock = None  # the JSON store's writes do not check a lock

    def __init__(self, answers: list[bool], rounds: int, stop: asyncio.Event) -> None:
        self.answers = answers
        self.rounds = rounds
        self.stop = stop
        self.asked = 0

    async def hold(self) -> bool:
        self.asked += 1
        if self.asked >= self.rounds:
            self.stop.set()
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    async def release(self) -> None:
        return None


async def _run_rounds(controller: Controller, answers: list[bool], rounds: int) -> None:
    stop = asyncio.Event()
    await asyncio.wait_for(controller.run(stop, 0.01, _Lease(answers, rounds, stop)), 30)


async def test_a_follower_does_not_evaluate_and_says_so(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    store = JsonStateStore(tmp_path / "state.json")
    controller = Controller(
        [experiment()], _Sums(_WORSE), store, SidecarMetrics(registry), clock=lambda: NOW
    )
    await _run_rounds(controller, [False], 3)
    assert registry.get_sample_value("recsys_experiment_controller_leader") == 0.0
    assert registry.get_sample_value("recsys_experiment_evaluations_total", {"result": "ok"}) == 0
    assert await store.decisions("exp") == []


async def test_a_lease_lost_while_evaluating_writes_no_decision(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    store = JsonStateStore(tmp_path / "state.json")
    controller = Controller(
        [experiment()], _Sums(_WORSE), store, SidecarMetrics(registry), clock=lambda: NOW
    )
    # Held when the round starts, gone when the rollback is about to be written.
    await _run_rounds(controller, [True, False], 2)
    assert await store.decisions("exp") == []
    assert await store.load_states() == {}
    # Leading again: the rollback is written once.
    await _run_rounds(controller, [True], 4)
    assert [r.decision for r in await store.decisions("exp")] == ["rollback"]
    assert registry.get_sample_value("recsys_experiment_controller_leader") == 1.0
