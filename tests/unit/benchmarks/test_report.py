"""Report assembly, target checks, the Markdown summary and writing/reading reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness import report as rep

LEVEL = {
    "concurrency": 32,
    "ok_rps": 850.0,
    "errors": 0,
    "latency_ms": {"p50_ms": 30.0, "p95_ms": 60.0, "p99_ms": 110.0, "max_ms": 150.0},
}


def scenarios() -> dict[str, Any]:
    return {
        "sweep": {"system": "local", "levels": [LEVEL]},
        "rate_search": {
            "steps": [
                {
                    "target_rps": 600,
                    **LEVEL,
                    "attempts": [
                        {"p99_ms": 310.0, "errors": 0, "ok_rps": 600.0},
                        {"p99_ms": 110.0, "errors": 0, "ok_rps": 600.0},
                        {"p99_ms": 105.5, "errors": 0, "ok_rps": 600.0},
                    ],
                }
            ],
            "sustainable_rps": {"p99_lt_100ms": 700, "p99_lt_50ms": 600, "p99_lt_25ms": None},
        },
        "ceilings": {
            "concurrency": 32,
            "ratio_vs_triton": 0.69,
            "ratio_vs_echo": 0.3,
            "latency_floor": {"rps": 100, "p50_ms": 1.04, "p99_ms": 7.76, "max_ms": 18.5},
        },
        "batching": {"best_gain_vs_off": 2.5, "variants": []},
        "soak": {"errors": 0, "p99_drift": 0.25, "rss_growth": 0.01, "windows": []},
        "memory": {"max_gateway_rss_mb": 180.0},
    }


def _checks(scen: dict[str, Any]) -> dict[str, rep.TargetCheck]:
    return {c.name: c for c in rep.evaluate_targets(scen)}


def test_targets_met_missed_and_not_measured() -> None:
    checks = _checks(scenarios())
    sustained = checks["sustained rate"]
    assert sustained.met is False
    assert sustained.measured == "600.00 req/s"
    assert sustained.gap == "short by 400.00 req/s (40% below target)"
    # The rate search ran and no rate met p99 < 25 ms: a miss, not "not measured".
    assert checks["ambition"].met is False
    assert checks["ambition"].measured == "none of the rates tried"
    assert checks["ambition"].gap == "short by 2,000.00 req/s (100% below target)"
    assert checks["vs Triton alone"].met is True
    assert checks["dynamic batching"].met is True
    assert checks["soak errors"].met is True
    assert checks["soak p99 drift"].met is False
    assert checks["soak p99 drift"].gap == "over by 5 %"
    assert checks["soak RSS growth"].met is True
    assert checks["gateway RSS"].met is True


def test_soak_drift_names_the_disturbed_windows() -> None:
    scen = scenarios()
    scen["soak"].update(disturbed_windows=[17, 19], p99_drift_undisturbed=0.08)
    drift = _checks(scen)["soak p99 drift"]
    assert drift.met is False  # judged on every window
    assert drift.gap == "over by 5 %; windows 17, 19 disturbed, drift without them +8.0%"
    scen["soak"].update(p99_drift=0.1)
    assert (
        _checks(scen)["soak p99 drift"].gap == "windows 17, 19 disturbed, drift without them +8.0%"
    )


def test_gateway_rss_limit_is_inclusive() -> None:
    scen = scenarios()
    scen["memory"]["max_gateway_rss_mb"] = 400.0
    assert _checks(scen)["gateway RSS"].met is True
    scen["memory"]["max_gateway_rss_mb"] = 460.0
    assert _checks(scen)["gateway RSS"].met is False


def test_empty_run_measures_nothing() -> None:
    assert all(c.met is None for c in rep.evaluate_targets({}))


def test_assemble_write_and_load(tmp_path: Path) -> None:
    created = datetime(2026, 11, 26, 17, 30, 11, tzinfo=UTC)
    report = rep.assemble_report(
        label="quick",
        machine={"cpu_count": 2, "cpu_model": "Xeon"},
        versions_={"python": "3.11.7", "ghz": "v0.120.0"},
        settings={"num_items": 10},
        scenarios=scenarios(),
        notes=["busy machine"],
        created=created,
    )
    assert report["kind"] == rep.REPORT_KIND
    assert report["created"] == "2026-11-26T17:30:11+00:00"
    assert {t["name"] for t in report["targets"]} >= {"sustained rate", "gateway RSS"}
    json_path, md_path = rep.write_report(report, tmp_path)
    assert json_path.name == "load-20261126T173011Z-quick.json"
    assert json.loads(json_path.read_text())["label"] == "quick"
    summary = md_path.read_text()
    assert "| 32 | 850.0 | 30.00 | 60.00 | 110.00 | 150.00 | 0 |" in summary
    assert "> busy machine" in summary
    assert (
        "- 600 req/s missed a bound the step below met, so it ran 3 times "
        "(p99 310.00 / 110.00 / 105.50 ms); the row shows the median run."
    ) in summary
    assert "at 100 req/s open loop answers with p50 1.04 ms, p99 7.76 ms, max 18.50 ms" in summary
    assert "MISSED" in summary
    (tmp_path / "load-garbage.json").write_text("{not json")
    (tmp_path / "load-other.json").write_text('{"kind": "something else"}')
    loaded = rep.load_reports(tmp_path)
    assert [r["label"] for r in loaded] == ["quick"]


def test_machine_and_versions_describe_this_host() -> None:
    machine = rep.machine_description()
    assert machine["cpu_count"] >= 1
    versions = rep.versions("v0.120.0", None)
    assert versions["python"].startswith("3.")
    assert versions["grpcio"]
    assert versions["ghz"] == "v0.120.0"


def test_rate_search_without_a_qualifying_rate_is_a_miss() -> None:
    scen = scenarios()
    scen["rate_search"]["sustainable_rps"] = {"p99_lt_50ms": None, "p99_lt_25ms": None}
    check = _checks(scen)["sustained rate"]
    assert check.met is False
    assert check.measured == "none of the rates tried"


def test_gateway_error_lines_are_summarised() -> None:
    from benchmarks.harness.procs import summarise_errors

    line = (
        '{"level": "ERROR", "logger": "grpc", "message": "ExecuteBatchError raised", '
        '"exc_info": "Traceback\\n  File x\\nExecuteBatchError: (<Op object at 0x7f35>)"}'
    )
    out = summarise_errors([line, line.replace("0x7f35", "0x9abc"), "plain text"])
    assert out == {
        "grpc: ExecuteBatchError raised | ExecuteBatchError: (<Op object>)": 2,
        "plain text": 1,
    }


def test_summary_shows_machine_disturbance_and_cpu_per_request() -> None:
    scen = scenarios()
    scen["sweep"]["levels"] = [
        {
            **LEVEL,
            "cpu_ms_per_request": {"gateway": 3.5, "triton": 1.2, "ghz and driver": 0.6},
            "machine": {"steal_share": 0.065, "outside_cores": 0.31, "disturbed": True},
        }
    ]
    scen["soak"].update(disturbed_windows=[2], p99_drift_undisturbed=0.04)
    report = rep.assemble_report(
        label="quick", machine={}, versions_={}, settings={}, scenarios=scen
    )
    summary = rep.markdown_summary(report)
    assert "| 32 | 850.0 | 30.00 | 60.00 | 110.00 | 150.00 | 0 | - | 6.5 | 0.31 |" in summary
    assert "- concurrency 32: gateway 3.50, triton 1.20, ghz and driver 0.60" in summary
    assert "0.25 cores): 2; p99 drift without them 4.0 %" in summary
