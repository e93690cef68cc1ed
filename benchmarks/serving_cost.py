"""What one answer costs: CPU per call by process, against the echo server, in one run.

The serving-cost figures of the README come from here. In one run, on one machine, with the
same ghz settings (closed loop, `--concurrency` workers on one connection, `--seconds` each):

1. `benchmarks/echo_server.py` answering a canned Recommend reply: the floor every Python
   gRPC call pays;
2. the gateway (`make run` profile, `--processes` gateway processes on one port) answering
   `grpc.health.v1.Health/Check`: what every call pays before any pipeline work;
3. the gateway answering `Recommend` for distinct real customers with the prediction and
   retrieval caches off (every request searches its candidates and is scored by Triton);
4. the same with both caches on and a repeat-visit mix: customers drawn by their order count
   in the data, as returning shoppers would come back;
5. Triton alone, driven by ghz with one request of the ranker's shape per call.

Every figure is given with the CPU milliseconds per answered call of each process (gateway,
Triton with its backend stubs, ghz), read from /proc around the run, and as a ratio to the echo
server measured in the same run, since absolute rates move from machine to machine.

    python -m benchmarks.serving_cost [--seconds 15] [--processes 1 2] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2

from benchmarks.harness import data, report, triton_driver
from benchmarks.harness import scenarios as sc
from benchmarks.harness.ghz import GhzRun, find_ghz, ghz_version
from benchmarks.harness.procs import System, echo_system, local_system

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
HEALTH_CALL = "grpc.health.v1.Health/Check"
TARGETS = {
    "gateway Recommend / echo CPU per call": 3.5,
    "gateway health check / echo CPU per call": 1.2,
}
"""Ceilings of the ratios (issue: serving cost)."""
TRITON_TARGET_MS = 0.6
RPS_RATIO_TARGET = 0.22


def _health_protoset(path: Path) -> Path:
    """The health service as a FileDescriptorSet for ghz (no .proto file ships with it)."""
    proto = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(proto)
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=[proto]).SerializeToString())
    return path


def distinct_requests(users: Sequence[tuple[str, str | None]], count: int) -> list[dict[str, Any]]:
    """One request for each of `count` distinct customers (all of them when fewer)."""
    rng = random.Random(20261203)
    chosen = rng.sample(list(users), min(count, len(users)))
    return data.build_requests(chosen, count=len(chosen), sample=False)


def repeat_visit_requests(
    users: Sequence[tuple[str, str | None]], orders: Mapping[str, int], count: int
) -> list[dict[str, Any]]:
    """`count` requests of customers drawn with probability proportional to their order count:
    frequent shoppers come back often, as on a live site."""
    weights = [max(orders.get(user, 0), 1) for user, _ in users]
    rng = random.Random(20261204)
    drawn = rng.choices(list(users), weights=weights, k=count)
    return data.build_requests(drawn, count=count, sample=False)


def _order_counts(path: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["user_id", "orders"])
    return dict(
        zip(
            (str(u) for u in table.column("user_id").to_pylist()),
            (int(o or 0) for o in table.column("orders").to_pylist()),
            strict=True,
        )
    )


def _figure(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a measured run that the report keeps."""
    lat = entry["latency_ms"]
    return {
        "ok_rps": entry["ok_rps"],
        "errors": entry["errors"],
        # which errors: RESOURCE_EXHAUSTED is admission shedding, anything else a failure
        "status_codes": {k: v for k, v in entry.get("status_codes", {}).items() if k != "OK"},
        "p50_ms": lat["p50_ms"],
        "p99_ms": lat["p99_ms"],
        "cpu_ms_per_request": entry["cpu_ms_per_request"],
        "fallback_share": entry.get("fallback_share"),
        "machine": entry["machine"],
    }


def _errors(figure: Mapping[str, Any]) -> str:
    """`0`, or the non-OK calls by status code (`12 RESOURCE_EXHAUSTED`)."""
    codes = figure.get("status_codes") or {}
    if not codes:
        return str(figure.get("errors", 0))
    return ", ".join(f"{n:,} {code}" for code, n in sorted(codes.items(), key=lambda c: -c[1]))


def _cpu(figure: Mapping[str, Any], role: str) -> float:
    return float(figure["cpu_ms_per_request"].get(role, 0.0))


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


@contextlib.contextmanager
def _gateway(workdir: Path, processes: int, prediction_cache: bool) -> Iterator[System]:
    with local_system(workdir, prediction_cache=prediction_cache, processes=processes) as system:
        yield system


def measure_processes(
    bench: sc.Bench,
    workdir: Path,
    processes: int,
    requests: Mapping[str, Path],
    health: tuple[Path, Path],
    profile: bool,
    connections: int,
) -> dict[str, Any]:
    """Health, Recommend cache off (and a py-spy profile), then Recommend cache on, over
    `connections` connections (the kernel spreads connections over the processes)."""
    seconds = bench.durations.ceiling
    c = bench.ceiling_concurrency
    out: dict[str, Any] = {"processes": processes}
    with _gateway(workdir / f"p{processes}-off", processes, prediction_cache=False) as system:
        sc.warm_up(bench, system)
        health_data, protoset = health
        run = GhzRun(
            target=system.target,
            data_file=health_data,
            duration_s=seconds,
            concurrency=c,
            connections=connections,
            call=HEALTH_CALL,
            protoset=protoset,
            name=f"health-p{processes}",
        )
        out["health"] = _figure(sc.measure(bench, system, run)[1])
        run = bench.ghz_run(
            system,
            f"recommend-p{processes}-cache-off",
            seconds,
            concurrency=c,
            connections=connections,
        )
        out["recommend_cache_off"] = _figure(sc.measure(bench, system, run)[1])
        if profile:
            out["profile"] = sc.profile_gateway(bench, system, workdir / f"p{processes}", "profile")
        out["triton_model"] = system.ranker_model
        out["triton_grpc_url"] = system.triton_grpc_url
        out["triton_pid"] = system.triton.pid if system.triton else None
        if processes == 1 and system.triton_grpc_url and system.ranker_model:
            alone = triton_driver.drive(
                bench.ghz,
                system.triton_grpc_url,
                system.ranker_model,
                workdir=workdir / "triton-alone",
                concurrency=c,
                duration_s=seconds,
                rows=550,
                server_pid=system.triton.pid if system.triton else None,
            )
            out["triton_alone"] = alone.as_dict()
    with _gateway(workdir / f"p{processes}-on", processes, prediction_cache=True) as system:
        bench_on = sc.Bench(
            ghz=bench.ghz,
            data_file=requests["repeat"],
            workdir=bench.workdir,
            durations=bench.durations,
            ceiling_concurrency=c,
            log=bench.log,
        )
        sc.warm_up(bench_on, system)
        run = bench_on.ghz_run(
            system,
            f"recommend-p{processes}-cache-on",
            seconds,
            concurrency=c,
            connections=connections,
        )
        out["recommend_cache_on"] = _figure(sc.measure(bench_on, system, run)[1])
    return out


def ratios(
    echo: Mapping[str, Any],
    one: Mapping[str, Any],
    echo_same_rate: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The issue's figures as ratios to the echo server of the same run (closed loop, as the
    targets are stated), and Recommend against the echo server driven at the gateway's rate."""
    echo_cpu = _cpu(echo, "echo")
    off = one["recommend_cache_off"]
    out = {
        "gateway Recommend / echo CPU per call": _ratio(_cpu(off, "gateway"), echo_cpu),
        "gateway health check / echo CPU per call": _ratio(
            _cpu(one["health"], "gateway"), echo_cpu
        ),
        "Recommend / echo req/s (closed loop)": _ratio(off["ok_rps"], echo["ok_rps"]),
        "Triton CPU per Recommend, ms": _cpu(off, "triton"),
    }
    if echo_same_rate is not None:
        out["gateway Recommend / echo at the same rate, CPU per call"] = _ratio(
            _cpu(off, "gateway"), _cpu(echo_same_rate, "echo")
        )
    return out


def render(result: Mapping[str, Any]) -> str:
    """The Markdown summary of one run."""
    machine = result["machine"]
    lines = [
        f"# Serving cost, {result['created']}",
        "",
        f"Machine: {machine['cpu_count']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_mb']} MB, load average at start {machine['load_average_at_start']}. "
        f"ghz {result['settings']['ghz']} on the same machine, closed loop, "
        f"{result['settings']['concurrency']} concurrent calls on "
        f"{result['settings'].get('connections', 1)} connections, "
        f"{result['settings']['seconds']:g} s per figure; {result['settings']['users']} distinct "
        "real customers (cache off); the cache-on mix draws customers by their order count.",
        "",
        "| target | processes | req/s | p50 / p99 ms | gateway CPU ms/call | "
        "Triton CPU ms/call | ghz CPU ms/call | fallback | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name: str, processes: object, fig: Mapping[str, Any], role: str) -> str:
        fallback = fig.get("fallback_share")
        return (
            f"| {name} | {processes} | {fig['ok_rps']:,.0f} | {fig['p50_ms']:.1f} / "
            f"{fig['p99_ms']:.1f} | {_cpu(fig, role):.3f} | {_cpu(fig, 'triton'):.3f} | "
            f"{_cpu(fig, 'ghz and driver'):.3f} | "
            f"{'—' if fallback is None else f'{fallback:.1%}'} | {_errors(fig)} |"
        )

    lines.append(row("echo server (canned Recommend)", 1, result["echo"], "echo"))
    same = result.get("echo_same_rate")
    if same:
        lines.append(row(f"echo server at {same['rps']} req/s (open loop)", 1, same, "echo"))
    for run in result["gateway"]:
        p = run["processes"]
        lines.append(row("gateway Health/Check", p, run["health"], "gateway"))
        lines.append(row("gateway Recommend, cache off", p, run["recommend_cache_off"], "gateway"))
        lines.append(row("gateway Recommend, cache on", p, run["recommend_cache_on"], "gateway"))
    alone = result["gateway"][0].get("triton_alone")
    if alone:
        lines.append(
            f"| Triton alone ({alone['model']}, {alone['rows_per_request']} rows) | — | "
            f"{alone['rps']:,.0f} | — | — | {alone.get('server_cpu_ms_per_request') or 0:.3f} "
            "| — | — | — |"
        )
    lines += ["", "| figure | this run | target |", "|---|---|---|"]
    for name, value in result["ratios"].items():
        target = TARGETS.get(name)
        if name.startswith("Recommend / echo"):
            shown = f"≥ {RPS_RATIO_TARGET}"
        elif "same rate" in name:
            shown = "— (context: the same calls per second)"
        elif name.startswith("Triton"):
            shown = f"≤ {TRITON_TARGET_MS} ms"
        else:
            shown = f"≤ {target}x"
        lines.append(f"| {name} | {value} | {shown} |")
    profile = result["gateway"][0].get("profile")
    if profile and "self" in profile:
        lines += ["", "py-spy, one gateway process, Recommend cache off (self time):", ""]
        for entry in profile["self"][:12]:
            lines.append(f"- {entry['share']:.1%} {entry['function']}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> tuple[Path, Path]:
    """Measures and writes the report; returns its (json, markdown) paths."""
    created = datetime.now(UTC)
    ghz = find_ghz()
    users = data.load_users()
    workdir = Path(tempfile.mkdtemp(prefix="serving-cost-"))
    distinct = data.write_data_file(workdir / "distinct.json", distinct_requests(users, args.users))
    repeat = data.write_data_file(
        workdir / "repeat.json",
        repeat_visit_requests(users, _order_counts(data.DEFAULT_USERS), args.users * 10),
    )
    health = (
        data.write_data_file(workdir / "health.json", [{"service": ""}]),
        _health_protoset(workdir / "health.protoset"),
    )
    durations = sc.Durations(warmup=args.warmup, ceiling=args.seconds, profile=args.seconds)
    bench = sc.Bench(
        ghz=ghz,
        data_file=distinct,
        workdir=workdir,
        durations=durations,
        ceiling_concurrency=args.concurrency,
        connections=args.connections,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    gateway_runs = [
        measure_processes(
            bench,
            workdir,
            processes,
            {"distinct": distinct, "repeat": repeat},
            health,
            args.profile and i == 0,
            args.connections,
        )
        for i, processes in enumerate(args.processes)
    ]
    with local_system(workdir / "capture", prediction_cache=True) as system:
        response = sc.capture_response(system.target, distinct, workdir / "response.bin")
    same_rate = max(int(gateway_runs[0]["recommend_cache_off"]["ok_rps"]), 1)
    with echo_system(workdir, response) as echo:
        sc.warm_up(bench, echo)
        run = bench.ghz_run(echo, "echo", args.seconds, concurrency=args.concurrency)
        echo_figure = _figure(sc.measure(bench, echo, run)[1])
        # The same server at the rate the gateway reached: a call's CPU depends on the rate
        # (at a few hundred calls a second each call wakes threads that thousands share).
        run = bench.ghz_run(
            echo,
            f"echo-{same_rate}rps",
            args.seconds,
            concurrency=64,
            rps=same_rate,
            open_loop=True,
        )
        echo_same_rate = _figure(sc.measure(bench, echo, run)[1])
    result: dict[str, Any] = {
        "benchmark": "serving cost: CPU per call by process against the echo server",
        "created": created.isoformat(timespec="seconds"),
        "machine": report.machine_description(),
        "settings": {
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "connections": args.connections,
            "users": args.users,
            "ghz": ghz_version(ghz),
            "config": "infra/config/local.yaml (make run), rate limit off (one ghz client)",
            "num_items": 10,
        },
        "echo": echo_figure,
        "echo_same_rate": {"rps": same_rate, **echo_same_rate},
        "gateway": gateway_runs,
        "ratios": ratios(echo_figure, gateway_runs[0], echo_same_rate),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"serving-cost-{created.strftime('%Y%m%dT%H%M%SZ')}"
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md_path = stem.with_suffix(".md")
    md_path.write_text(render(result), encoding="utf-8")
    return json_path, md_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serving_cost", description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each figure")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--connections",
        type=int,
        default=8,
        help="gRPC connections ghz spreads its workers over (every target alike)",
    )
    parser.add_argument("--users", type=int, default=2000, help="distinct customers")
    parser.add_argument(
        "--processes", type=int, nargs="+", default=[1, 2], help="gateway processes to measure"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the first gateway")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    json_path, md_path = run(args)
    print(md_path.read_text(encoding="utf-8"))
    print(f"report: {json_path}")
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
