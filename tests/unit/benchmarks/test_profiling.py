"""The py-spy summary of the load report: shares of samples per function."""

from __future__ import annotations

from benchmarks.harness.profiling import summarize

RUN = "run (asyncio/runners.py:118)"
RECOMMEND = "recommend (/work/main/gateway/recommender.py:{})"
NEAREST = "nearest (/work/main/gateway/stages/candidates.py:110)"
COLLAPSED = (
    f"{RUN};{RECOMMEND.format(88)};{NEAREST} 6\n"
    f"{RUN};{RECOMMEND.format(90)} 3\n"
    f"{RUN};select (selectors.py:468) 1\n"
)


def test_summary_counts_inclusive_and_self_shares() -> None:
    summary = summarize(COLLAPSED, top=3)

    assert summary["samples"] == 10
    inclusive = {row["function"]: row["share"] for row in summary["inclusive"]}
    assert inclusive == {
        "run (asyncio/runners.py)": 1.0,
        "recommend (gateway/recommender.py)": 0.9,  # lines 88 and 90: one function
        "nearest (stages/candidates.py)": 0.6,
    }
    own = {row["function"]: row["share"] for row in summary["self"]}
    assert own == {
        "nearest (stages/candidates.py)": 0.6,
        "recommend (gateway/recommender.py)": 0.3,
        "select (selectors.py)": 0.1,
    }


def test_lines_without_a_count_are_ignored() -> None:
    summary = summarize("garbage\n\nrun (a.py:1) x\nrun (a.py:1) 2\n")
    assert summary["samples"] == 2
    assert summary["self"] == [{"function": "run (a.py)", "share": 1.0}]
