"""The chaos figures from recorded answers: recovery, per-fault summary, fault moments and the
error budget, on hand-made answer sequences with hand-counted expectations."""

from __future__ import annotations

import random

from benchmarks.chaos_soak import error_budget, fault_times
from benchmarks.harness.chaos import Answer, recovery_s, summarise_fault


def _ok(t: float, *, ranked: bool = True, latency_s: float = 0.010) -> Answer:
    return Answer(t, latency_s, "Recommend", "OK", degraded=not ranked, ranked=ranked)


def _failed(t: float, code: str = "UNAVAILABLE") -> Answer:
    return Answer(t, 0.001, "Recommend", code, ranked=False, features=False)


def test_recovery_is_the_first_answer_of_a_whole_span() -> None:
    answers = [_ok(t / 10) for t in range(0, 10)]  # before the fault at 1.0
    answers += [_ok(1.0 + t / 10, ranked=False) for t in range(0, 30)]  # 1.0 .. 3.9 fallback
    answers += [_ok(4.0 + t / 10) for t in range(0, 30)]  # 4.0 .. 6.9 ranked again
    assert recovery_s(answers, fault_s=1.0, until_s=10.0) == 3.0  # ranked again from 4.0


def test_no_recovery_when_the_whole_span_never_comes() -> None:
    answers = [_ok(1.0 + t / 10, ranked=False) for t in range(0, 30)] + [_ok(4.0), _ok(5.0)]
    assert recovery_s(answers, fault_s=1.0, until_s=5.5) is None


def test_an_unnoticed_fault_recovers_at_once() -> None:
    answers = [_ok(t / 10) for t in range(0, 40)]
    assert recovery_s(answers, fault_s=1.0, until_s=4.0) == 0.0


def test_summary_counts_codes_shares_and_p99_in_its_window() -> None:
    answers = [
        _ok(0.5),  # before the window
        _ok(1.0, latency_s=0.020),
        _ok(1.1, ranked=False, latency_s=0.100),
        _failed(1.2),
        _failed(1.3, "RESOURCE_EXHAUSTED"),
        Answer(1.4, 0.005, "RecordEvents", "OK"),
        _ok(9.0),  # after the window
    ]
    summary = summarise_fault(answers, 1.0, 5.0, back_s=3.5)
    assert summary["answers"] == 5
    assert summary["non_ok"] == {"UNAVAILABLE": 1, "RESOURCE_EXHAUSTED": 1}
    assert summary["non_ok_beyond_shedding"] == 1  # RESOURCE_EXHAUSTED is shedding
    assert summary["degraded_share"] == 0.5  # 1 of the 2 OK Recommend answers
    assert summary["unranked_share"] == 0.5
    assert summary["p99_ms"] == 100.0  # nearest rank over 20, 100 and 5 ms
    assert summary["process_back_s"] == 3.5
    assert summary["recovery_s"] is None  # no 2 s span observed before 5.0


def test_fault_moments_fall_in_their_own_slices_in_random_order() -> None:
    programs = ["triton", "redis", "postgres", "gateway1"]
    schedule = fault_times(programs, duration_s=600.0, rng=random.Random(3), margin_s=10.0)
    assert sorted(p for _, p in schedule) == sorted(programs)
    slice_s = (600.0 - 10.0) / 4
    for i, (at_s, _) in enumerate(schedule):
        assert 10.0 + i * slice_s <= at_s <= 10.0 + i * slice_s + slice_s / 2
    assert schedule == fault_times(programs, 600.0, random.Random(3), margin_s=10.0)


def test_error_budget_used() -> None:
    budget = error_budget(answers=20_000, failed=5, objective=0.999)
    assert budget["allowed_failures"] == 20.0
    assert budget["budget_used"] == 0.25
    assert error_budget(answers=0, failed=0, objective=0.999)["budget_used"] is None


def test_without_a_ranker_unranked_answers_are_whole() -> None:
    # No Triton in the system: every answer comes from the fallback, which is then normal.
    answers = [_ok(t / 10, ranked=False) for t in range(0, 40)]
    assert recovery_s(answers, fault_s=1.0, until_s=4.0, ranked=False) == 0.0
    assert recovery_s(answers, fault_s=1.0, until_s=4.0, ranked=True) is None


def test_a_call_sent_before_a_fault_and_failed_by_it_belongs_to_the_fault() -> None:
    in_flight = Answer(0.99, 0.2, "Recommend", "UNAVAILABLE", ranked=False, features=False)
    assert summarise_fault([in_flight], 0.0, 1.0, back_s=None)["non_ok"] == {}
    assert summarise_fault([in_flight], 1.0, 5.0, back_s=None)["non_ok"] == {"UNAVAILABLE": 1}


def test_shares_and_p99_cover_the_fault_while_it_lasted() -> None:
    answers = [_ok(0.5, ranked=False, latency_s=0.5)]  # the fault's one fallback answer
    answers += [_ok(1.0 + t / 10) for t in range(0, 90)]  # 1.0 .. 9.9, whole
    summary = summarise_fault(answers, 0.0, 10.0, back_s=3.0)
    assert summary["recovery_s"] == 1.0
    assert summary["lasted_s"] == 3.0  # until the process served again
    assert summary["degraded_share"] == round(1 / 21, 4)  # 1 of the 21 back before 3.0 s
    assert summary["p99_ms"] == 500.0
    assert summary["answers"] == 91


def test_a_stray_degraded_answer_does_not_hide_the_recovery() -> None:
    # 1 answer in 200 misses a budget with no fault (under the 1% tolerated), 2 in 100 do not.
    answers = [_ok(1.0 + t / 100, ranked=t % 200 != 150) for t in range(0, 400)]
    assert recovery_s(answers, fault_s=1.0, until_s=6.0) == 0.0
    answers = [_ok(1.0 + t / 100, ranked=t % 50 != 25) for t in range(0, 400)]
    assert recovery_s(answers, fault_s=1.0, until_s=6.0) is None
