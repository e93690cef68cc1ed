"""ghz command lines and the parsing of its JSON report (a report shaped like v0.120.0's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness.ghz import GhzError, GhzRun, ghz_argv, parse_report, percentile


def _detail(second: float, latency_ms: float, status: str = "OK") -> dict[str, Any]:
    whole = int(second)
    frac = f"{second - whole:.9f}"[2:]
    return {
        "timestamp": f"2026-11-26T17:22:{30 + whole:02d}.{frac}Z",
        "latency": int(latency_ms * 1e6),
        "error": "" if status == "OK" else "rpc error: code = Unavailable",
        "status": status,
    }


def _report(details: list[dict[str, Any]]) -> dict[str, Any]:
    ok = sum(1 for d in details if d["status"] == "OK")
    return {
        "name": "sweep-c8",
        "endReason": "timeout",
        "date": "2026-11-26T17:22:33Z",
        "options": {"concurrency": 8, "connections": 1, "CPUs": 2, "insecure": True},
        "count": len(details),
        "total": 2_000_000_000,
        "average": 15_000_000,
        "fastest": 5_000_000,
        "slowest": 74_000_000,
        "rps": len(details) / 2.0,
        "errorDistribution": {"rpc error: code = Unavailable": len(details) - ok},
        "statusCodeDistribution": {"OK": ok, "Unavailable": len(details) - ok},
        "latencyDistribution": [
            {"percentage": 50, "latency": 14_000_000},
            {"percentage": 95, "latency": 22_000_000},
            {"percentage": 99, "latency": 50_000_000},
        ],
        "histogram": [],
        "details": details,
    }


def test_percentile_nearest_rank() -> None:
    sample = [float(x) for x in range(1, 101)]
    assert percentile(sample, 50) == 50.0
    assert percentile(sample, 99) == 99.0
    assert percentile(sample, 99.9) == 100.0
    assert percentile([], 99) == 0.0


def test_parse_report_from_details() -> None:
    details = [_detail(i * 0.01, 10.0 + i) for i in range(100)]
    details += [_detail(1.5, 500.0, "Unavailable")]
    result = parse_report(_report(details))
    assert result.count == 101
    assert result.ok == 100
    assert result.errors == 1
    assert result.duration_s == pytest.approx(2.0)
    assert result.ok_rps == pytest.approx(50.0)
    # Percentiles of OK calls only: the 500 ms error does not count.
    assert result.latency.p50_ms == pytest.approx(59.0)
    assert result.latency.p99_ms == pytest.approx(108.0)
    assert result.latency.max_ms == pytest.approx(109.0)
    assert result.status_codes == {"OK": 100, "Unavailable": 1}


def test_parse_report_intervals_by_start_second() -> None:
    details = [_detail(0.1, 5.0), _detail(0.9, 7.0), _detail(1.2, 20.0)]
    details.append(_detail(2.5, 1.0, "DeadlineExceeded"))
    result = parse_report(_report(details))
    assert [(i.start_s, i.count, i.errors) for i in result.intervals] == [
        (0.0, 2, 0),
        (1.0, 1, 0),
        (2.0, 1, 1),
    ]
    assert result.intervals[0].p99_ms == pytest.approx(7.0)
    assert result.intervals[2].p99_ms == 0.0  # no OK call in that second


def test_parse_report_without_details_uses_ghz_distribution() -> None:
    report = _report([])
    report["count"], report["statusCodeDistribution"] = 300, {"OK": 300}
    result = parse_report(report)
    assert result.latency.p50_ms == pytest.approx(14.0)
    assert result.latency.p99_ms == pytest.approx(50.0)
    assert result.latency.max_ms == pytest.approx(74.0)
    assert result.intervals == ()


def test_parse_report_rejects_other_json() -> None:
    with pytest.raises(GhzError):
        parse_report({"hello": "world"})


def test_as_dict_rounds_and_keeps_known_options() -> None:
    result = parse_report(_report([_detail(0.0, 12.3456)]))
    out = result.as_dict(with_intervals=False)
    assert out["latency_ms"]["p99_ms"] == 12.346
    assert out["options"] == {"concurrency": 8, "connections": 1, "CPUs": 2}
    assert "intervals" not in out


def test_open_loop_argv(tmp_path: Path) -> None:
    run = GhzRun(
        target="127.0.0.1:50051",
        data_file=tmp_path / "d.json",
        duration_s=2.5,
        concurrency=64,
        rps=400,
        open_loop=True,
        name="rate-400",
    )
    argv = ghz_argv(Path("/bin/ghz"), run, tmp_path / "out.json")
    assert argv[0] == "/bin/ghz"
    assert argv[-1] == "127.0.0.1:50051"
    for flag in (
        "--async",
        "--rps=400",
        "--concurrency=64",
        "--duration=2500ms",
        "--duration-stop=wait",
        "--format=json",
        f"--data-file={tmp_path / 'd.json'}",
        "--call=recsys.v1.RecommendationService/Recommend",
    ):
        assert flag in argv


def test_open_loop_needs_a_rate(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rate"):
        GhzRun(target="x:1", data_file=tmp_path, duration_s=1, open_loop=True)


def test_protoset_and_binary_argv(tmp_path: Path) -> None:
    run = GhzRun(
        target="127.0.0.1:8001",
        data_file=tmp_path / "req.bin",
        duration_s=3,
        call="inference.GRPCInferenceService/ModelInfer",
        protoset=tmp_path / "triton.protoset",
        binary_file=tmp_path / "req.bin",
    )
    argv = ghz_argv(Path("/bin/ghz"), run, tmp_path / "out.json")
    assert f"--protoset={tmp_path / 'triton.protoset'}" in argv
    assert f"--binary-file={tmp_path / 'req.bin'}" in argv
    assert not [a for a in argv if a.startswith(("--proto=", "--import-paths=", "--data-file="))]
