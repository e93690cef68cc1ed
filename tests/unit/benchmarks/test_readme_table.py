"""The README performance table: rendering from reports and rewriting between markers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import render_readme_table as table
from benchmarks.harness import report as rep

README = """# recsys

Intro.

<!-- perf-table:start -->
old table
<!-- perf-table:end -->

## After
"""


def _report(label: str, created: str, **scenarios: Any) -> dict[str, Any]:
    return {
        "kind": rep.REPORT_KIND,
        "label": label,
        "created": created,
        "machine": {"cpu_count": 2},
        "scenarios": scenarios,
    }


def test_replace_between_markers_keeps_the_rest() -> None:
    out = table.replace_between_markers(README, "| a |\n|---|\n")
    assert out.startswith("# recsys\n\nIntro.\n\n<!-- perf-table:start -->\n| a |\n|---|\n")
    assert out.endswith("<!-- perf-table:end -->\n\n## After\n")
    assert "old table" not in out
    # Idempotent.
    assert table.replace_between_markers(out, "| a |\n|---|\n") == out


@pytest.mark.parametrize(
    "text",
    [
        "no markers",
        "<!-- perf-table:start --> only start",
        "<!-- perf-table:end --> x <!-- perf-table:start -->",
        "<!-- perf-table:start --><!-- perf-table:end --><!-- perf-table:end -->",
    ],
)
def test_markers_must_be_there_once_and_in_order(text: str) -> None:
    with pytest.raises(table.MarkerError):
        table.replace_between_markers(text, "x")


def test_rows_come_from_the_newest_full_report_then_quick() -> None:
    old_full = _report(
        "full",
        "2026-11-20T10:00:00+00:00",
        rate_search={"sustainable_rps": {"p99_lt_50ms": 800}},
    )
    new_full = _report(
        "full",
        "2026-11-25T10:00:00+00:00",
        rate_search={"sustainable_rps": {"p99_lt_50ms": 1200}},
    )
    quick = _report(
        "quick",
        "2026-11-26T10:00:00+00:00",
        rate_search={"sustainable_rps": {"p99_lt_50ms": 5}},
        memory={"max_gateway_rss_mb": 181.4},
    )
    text = table.render_table([old_full, quick, new_full])
    assert (
        "| Sustained Recommend rate, p99 < 50 ms, no errors | 1,200 req/s | >= 1,000 req/s |"
        in (text)
    )
    assert "full, 2026-11-25, 2 CPUs" in text
    assert "| Largest gateway RSS | 181 MB | <= 400 MB | quick, 2026-11-26, 2 CPUs (quick" in text
    assert "| Dynamic batching vs none (Triton, 32 concurrent) | not measured yet |" in text


def test_update_readme_on_a_temp_copy(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    results = tmp_path / "results"
    results.mkdir()
    report = _report("full", "2026-11-25T10:00:00+00:00", ceilings={"ratio_vs_triton": 0.693})
    (results / "load-20261125T100000Z-full.json").write_text(json.dumps(report))
    assert table.update_readme(readme, results) is True
    text = readme.read_text()
    assert "| Gateway / Triton alone, 32 concurrent | 69% | >= 40% |" in text
    assert text.endswith("<!-- perf-table:end -->\n\n## After\n")
    assert table.update_readme(readme, results) is False
    assert table.main(["--readme", str(readme), "--results", str(results), "--check"]) == 0


def test_a_search_without_a_qualifying_rate_says_so() -> None:
    miss = _report(
        "full",
        "2026-11-25T10:00:00+00:00",
        rate_search={
            "steps": [{"target_rps": 280}, {"target_rps": 620}],
            "sustainable_rps": {"p99_lt_50ms": None},
        },
    )
    assert "| none of the rates tried (280-620 req/s) |" in table.render_table([miss])


def test_soak_row_says_how_much_the_fallback_ranked() -> None:
    soak = {"duration_s": 600.0, "target_rps": 70, "errors": 0, "p99_drift": 0.05}
    with_share = _report("full", "2026-11-27T10:00:00+00:00", soak={**soak, "rss_growth": 0.001})
    with_share["scenarios"]["soak"]["fallback_share"] = 0.004
    assert (
        "| Soak | 600 s at 70/s: 0 errors, p99 drift +5%, RSS +0.1%, 0.4% ranked by the fallback |"
        in table.render_table([with_share])
    )
    without = _report("full", "2026-11-27T10:00:00+00:00", soak={**soak, "rss_growth": None})
    assert "| Soak | 600 s at 70/s: 0 errors, p99 drift +5%, RSS - |" in table.render_table(
        [without]
    )


def test_soak_row_names_disturbed_windows() -> None:
    soak: dict[str, Any] = {"duration_s": 600.0, "target_rps": 70, "errors": 0}
    soak.update(p99_drift=0.5, rss_growth=0.001, p99_drift_undisturbed=0.05)
    soak.update(windows=[{}] * 20, disturbed_windows=[17, 18, 19])
    assert (
        "p99 drift +50%, RSS +0.1%; 3 of 20 windows disturbed by other load (drift without "
        "them +5%) |"
        in table.render_table([_report("full", "2026-11-27T10:00:00+00:00", soak=soak)])
    )


def test_cost_row_names_its_rate_and_the_stricter_one() -> None:
    plan = {
        "p99_bound_ms": 100,
        "measured_rps": 250.0,
        "usd_per_million": 0.142,
        "at_p99_lt_50ms": {"measured_rps": 90.0, "usd_per_million": 0.394},
    }
    rendered = table.render_table([_report("full", "2026-11-27T10:00:00+00:00", capacity=plan)])
    assert (
        "| Cost per million requests (70% utilisation) | $0.142 at 250 req/s (p99 < 100 ms); "
        "$0.394 at 90 req/s (p99 < 50 ms) | <= $0.26 |" in rendered
    )
