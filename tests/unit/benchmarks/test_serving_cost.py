"""The serving-cost report's pure parts: request mixes, ratios to the echo server, Markdown."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2

from benchmarks import serving_cost

USERS = [(f"u{i}", "United Kingdom" if i % 2 else None) for i in range(50)]


def _figure(rps: float, cpu: dict[str, float]) -> dict[str, Any]:
    return {
        "ok_rps": rps,
        "errors": 0,
        "p50_ms": 10.0,
        "p99_ms": 20.0,
        "cpu_ms_per_request": cpu,
        "fallback_share": 0.0,
        "machine": {},
    }


def test_distinct_requests_name_each_customer_once() -> None:
    requests = serving_cost.distinct_requests(USERS, 20)
    ids = [r["user_id"] for r in requests]
    assert len(ids) == len(set(ids)) == 20
    assert serving_cost.distinct_requests(USERS, 20) == requests  # seeded: reruns send the same
    assert len(serving_cost.distinct_requests(USERS, 500)) == 50  # never more than there are


def test_repeat_visits_follow_order_counts() -> None:
    orders = {"u0": 90, "u1": 10}
    requests = serving_cost.repeat_visit_requests(USERS[:2], orders, 2000)
    counts = Counter(r["user_id"] for r in requests)
    assert 0.85 < counts["u0"] / 2000 < 0.95


def test_ratios_are_taken_against_the_echo_server_of_the_same_run() -> None:
    echo = _figure(4000.0, {"echo": 0.25, "ghz and driver": 0.2})
    gateway = {
        "health": _figure(3000.0, {"gateway": 0.3}),
        "recommend_cache_off": _figure(1000.0, {"gateway": 0.75, "triton": 0.5}),
    }
    same_rate = _figure(1000.0, {"echo": 0.6})
    ratios = serving_cost.ratios(echo, gateway, same_rate)
    assert ratios == {
        "gateway Recommend / echo CPU per call": 3.0,
        "gateway health check / echo CPU per call": 1.2,
        "Recommend / echo req/s (closed loop)": 0.25,
        "Triton CPU per Recommend, ms": 0.5,
        "gateway Recommend / echo at the same rate, CPU per call": 1.25,
    }


def test_report_lists_every_run_and_each_target(tmp_path: Path) -> None:
    echo = _figure(4000.0, {"echo": 0.25, "ghz and driver": 0.2})
    run: dict[str, Any] = {
        "processes": 1,
        "health": _figure(3000.0, {"gateway": 0.3}),
        "recommend_cache_off": _figure(1000.0, {"gateway": 0.75, "triton": 0.5}),
        "recommend_cache_on": _figure(1500.0, {"gateway": 0.5, "triton": 0.2}),
    }
    profiled = {
        **run,
        "profile": {
            "samples": 10,
            "self": [{"function": "Runner.run (asyncio/runners.py:118)", "share": 0.25}],
        },
    }
    result: dict[str, Any] = {
        "created": "2026-12-03T18:00:00+00:00",
        "machine": {
            "cpu_count": 2,
            "cpu_model": "Xeon",
            "memory_mb": 24000,
            "load_average_at_start": [0.1],
        },
        "settings": {"ghz": "v0.120.0", "concurrency": 32, "seconds": 15.0, "users": 2000},
        "echo": echo,
        "gateway": [profiled, {**run, "processes": 2}],
        "ratios": serving_cost.ratios(echo, run),
    }
    text = serving_cost.render(result)
    assert "- 25.0% Runner.run (asyncio/runners.py:118)" in text
    assert "| gateway Recommend, cache off | 1 | 1,000 | 10.0 / 20.0 | 0.750 | 0.500 |" in text
    assert "| gateway Recommend, cache on | 2 | 1,500 |" in text
    assert "| gateway Recommend / echo CPU per call | 3.0 | ≤ 3.5x |" in text
    assert "| Triton CPU per Recommend, ms | 0.5 | ≤ 0.6 ms |" in text


def test_health_protoset_describes_the_check_method(tmp_path: Path) -> None:
    path = serving_cost._health_protoset(tmp_path / "health.protoset")
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file
    (health,) = files
    assert health.package == "grpc.health.v1"
    assert "Check" in [m.name for m in health.service[0].method]
