"""Load scenarios of the Recommend RPC with ghz; writes a JSON report and a Markdown summary.

Starts what it measures (the `make run` profile by default: gateway + Triton when built;
`--stack` for nginx + several gateways), waits for gRPC health SERVING, warms up, and runs
the chosen scenarios against `recsys.v1.RecommendationService/Recommend` with requests of
real users (build/data/users.parquet), `num_items` 10:

    sweep     closed-loop concurrency sweep (1, 8, 32, 64, 128)
    rate      open-loop constant-rate steps: highest rate with p99 < 100 / 50 / 25 ms
    spike     10x the sustainable rate for 30 s, latency per second, recovery time
    soak      70% of the sustainable rate (--soak-seconds, default 600), p99 drift, RSS
    ceilings  the same ghz load on benchmarks/echo_server.py; Triton alone (ghz, protoset)
    batching  Triton dynamic batching on/off, queue delays, instance counts (concurrency 32)
    capacity  cores, replicas and cost per million requests from the sustainable rate

    python -m benchmarks.ghz_scenarios                  # all, default durations
    python -m benchmarks.ghz_scenarios sweep ceilings --quick
    python -m benchmarks.ghz_scenarios soak --soak-seconds 600 --base-rps 400
    python -m benchmarks.ghz_scenarios sweep --no-profile
    python -m benchmarks.ghz_scenarios sweep rate --target recsys.example.com:443 \
        --ca-file ca.pem --token-file token            # an existing deployment

With `--target` nothing is started: the scenarios that only need the gRPC endpoint (sweep, rate,
spike, soak) run against it, over TLS (`--tls`, `--ca-file`, `--server-name`) and with a bearer
token (`--token-file`) when asked; the server's CPU is not measured (its processes run
elsewhere) and the profile is skipped. Its users should be this data set's customers
(build/data/users.parquet), as requests for unknown users measure the cold-start path.

While the system runs, py-spy samples the gateway under concurrency 32 (`--no-profile` skips
it); the report lists where its time goes and keeps the collapsed stacks for a flame graph.

Everything started is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness import capacity, data, report
from benchmarks.harness import scenarios as sc
from benchmarks.harness.ghz import find_ghz, ghz_version
from benchmarks.harness.procs import System, external_system, local_system, stack_system
from benchmarks.harness.target import add_target_arguments, connection_from_args

SCENARIOS = ("sweep", "rate", "spike", "soak", "ceilings", "batching", "capacity")
REMOTE_SCENARIOS = ("sweep", "rate", "spike", "soak")
"""What an existing deployment (`--target`) can be measured with: the others start servers of
their own (echo, Triton alone) or count the server's CPU."""
REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghz_scenarios",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # No `choices`: argparse (3.11) checks a `nargs="*"` default list against them and fails.
    parser.add_argument(
        "scenarios", nargs="*", default=["all"], help=f"any of {', '.join(SCENARIOS)}, or all"
    )
    parser.add_argument("--stack", action="store_true", help="measure the `make stack` profile")
    parser.add_argument("--quick", action="store_true", help="short smoke durations (1-2 min)")
    parser.add_argument("--soak-seconds", type=float, default=None, help="soak length (600)")
    parser.add_argument(
        "--base-rps",
        type=int,
        default=None,
        help="sustainable rate for spike/soak when the rate scenario is not run",
    )
    parser.add_argument("--rates", type=int, nargs="+", default=None, help="rate steps to try")
    parser.add_argument("--levels", type=int, nargs="+", default=None, help="sweep concurrency")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="gateway config (default: infra/config/local.yaml, or stack.yaml with --stack)",
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="distinct requests in the data file"
    )
    parser.add_argument(
        "--no-profile",
        dest="profile",
        action="store_false",
        help="skip the py-spy profile of the gateway under load (concurrency 32)",
    )
    parser.add_argument(
        "--prediction-cache",
        action="store_true",
        help="keep the gateway's prediction cache on (off by default: every request is scored "
        "by Triton, as the targets require; ghz cycles through a few thousand requests)",
    )
    parser.add_argument("--label", default=None, help="report label (default: quick / full)")
    parser.add_argument("--results-dir", type=Path, default=report.RESULTS_DIR)
    parser.add_argument(
        "--stack-processes", type=int, default=None, help="gateways behind nginx (--stack)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="gateway processes sharing the port, as make run starts them (local profile)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=None,
        help="gRPC connections per ghz run (default: 1, or 4 per gateway process)",
    )
    add_target_arguments(parser)
    return parser


@contextlib.contextmanager
def _system(args: argparse.Namespace, workdir: Path) -> Iterator[System]:
    if args.target:
        with external_system(args.target, args.connection, workdir) as s:
            yield s
    elif args.stack:
        with stack_system(
            workdir,
            config=args.config,
            processes=args.stack_processes,
            prediction_cache=args.prediction_cache,
        ) as s:
            yield s
    else:
        with local_system(
            workdir,
            config=args.config,
            prediction_cache=args.prediction_cache,
            processes=args.processes,
        ) as s:
            yield s


def _plots(report_obj: dict[str, Any], stem: Path) -> str:
    """Latency plots as PNG when matplotlib is importable; otherwise say they were skipped."""
    if importlib.util.find_spec("matplotlib") is None:
        return "skipped: matplotlib is not importable (run `make setup`: it is a dev dependency)"
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    written = []
    scen = report_obj["scenarios"]
    if "sweep" in scen:
        levels = scen["sweep"]["levels"]
        fig, ax = plt.subplots()
        for key in ("p50_ms", "p95_ms", "p99_ms"):
            ax.plot(
                [e["concurrency"] for e in levels],
                [e["latency_ms"][key] for e in levels],
                "o-",
                label=key,
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel("latency (ms)")
        ax.legend()
        path = stem.with_name(stem.name + ".sweep.png")
        fig.savefig(path)
        written.append(path.name)
    if "soak" in scen:
        windows = scen["soak"]["windows"]
        fig, ax = plt.subplots()
        ax.plot(range(len(windows)), [w["latency_ms"]["p99_ms"] for w in windows], "o-")
        ax.set_xlabel("window")
        ax.set_ylabel("p99 (ms)")
        path = stem.with_name(stem.name + ".soak.png")
        fig.savefig(path)
        written.append(path.name)
    return "written: " + ", ".join(written) if written else "nothing to plot"


def run(args: argparse.Namespace) -> tuple[Path, Path]:
    """Run the chosen scenarios and write the report; returns (json, markdown) paths."""
    unknown = set(args.scenarios) - {*SCENARIOS, "all"}
    if unknown:
        raise SystemExit(f"unknown scenario(s) {sorted(unknown)}; choose from {SCENARIOS}")
    chosen = set(SCENARIOS) if "all" in args.scenarios else set(args.scenarios)
    if args.target:
        if "all" in args.scenarios:
            chosen = set(REMOTE_SCENARIOS)
        elif chosen - set(REMOTE_SCENARIOS):
            raise SystemExit(
                f"{sorted(chosen - set(REMOTE_SCENARIOS))} cannot run against --target; "
                f"choose from {REMOTE_SCENARIOS}"
            )
        args.profile = False  # py-spy samples a local process
    if args.config is None:
        args.config = REPO / "infra" / "config" / ("stack.yaml" if args.stack else "local.yaml")
    durations = sc.Durations.quick() if args.quick else sc.Durations()
    if args.soak_seconds is not None:
        durations = sc.Durations(**{**vars(durations), "soak": args.soak_seconds})
    label = args.label or ("quick" if args.quick else "full")
    created = datetime.now(UTC)
    stamp = created.strftime("%Y%m%dT%H%M%SZ")
    results_dir: Path = args.results_dir
    stem = results_dir / f"load-{stamp}-{label}"
    ghz = find_ghz()
    machine = report.machine_description()
    notes = []
    if args.quick:
        notes.append(
            "QUICK smoke run: a few seconds per step, not a benchmark result. "
            "The machine is shared and was busy; figures are indicative only."
        )
    if (machine.get("load_average_at_start") or [0])[0] > (machine.get("cpu_count") or 1) * 0.5:
        notes.append(
            f"load average {machine['load_average_at_start']} at start on "
            f"{machine['cpu_count']} CPUs: other work competed for the cores"
        )
    scen: dict[str, Any] = {}
    settings: dict[str, Any] = {
        "scenarios": sorted(chosen),
        "profile": (
            f"external target {args.target}: {args.connection.describe()}"
            if args.target
            else "stack"
            if args.stack
            else "local (make run)"
        ),
        "config": "(the deployment's own)" if args.target else str(args.config),
        "durations_s": vars(durations),
        "num_items": 10,
        "distinct_requests": args.requests,
        "ghz_timeout_s": 2.0,
        "rate_limit": "the deployment's own (ghz is one client address)"
        if args.target
        else "disabled (RECSYS__SERVING__RATE_LIMIT=): ghz is one client address",
        "prediction_cache": "on"
        if args.prediction_cache
        else "off: every request is scored by Triton (--prediction-cache keeps it on)",
    }
    tritonserver_version = None
    results_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recsys-load-") as scratch:
        workdir = Path(scratch)
        data_file = data.write_data_file(
            workdir / "requests.json",
            data.build_requests(
                data.load_users(REPO / "build" / "data" / "users.parquet"), count=args.requests
            ),
        )
        bench = sc.Bench(ghz=ghz, data_file=data_file, workdir=workdir, durations=durations)
        if args.levels:
            bench.sweep_levels = tuple(args.levels)
        bench.connections = args.connections or (1 if args.processes == 1 else 4 * args.processes)
        settings["gateway_processes"] = None if args.target else args.processes
        settings["ghz_connections"] = bench.connections
        settings["sweep_levels"] = list(bench.sweep_levels)
        settings["ceiling_concurrency"] = bench.ceiling_concurrency
        settings["open_loop_workers"] = bench.rate_concurrency
        needs_system = chosen & {"sweep", "rate", "spike", "soak", "ceilings", "capacity"}
        if needs_system:
            with _system(args, workdir) as system:
                bench.log(f"{system.kind}: SERVING on {system.target}")
                settings["triton"] = (
                    f"{system.triton_grpc_url} serving {system.ranker_model}"
                    if system.triton_grpc_url
                    else "the deployment's own"
                    if system.remote
                    else "not started: build/triton/local does not exist"
                )
                sc.warm_up(bench, system)
                answer = sc.describe_reply(
                    sc.sample_reply(system.target, data_file, system.connection)
                )
                settings["gateway_answer"] = answer
                if "DEGRADED_REASON_NO_MODEL" in answer.get("degraded_reasons", []):
                    notes.append(
                        "The gateway answered with the popularity fallback "
                        f"(model_version {answer.get('model_version')!r}, "
                        "DEGRADED_REASON_NO_MODEL): Triton was not on its hot path, so the "
                        "gateway figures and the ratio to Triton alone do not include ranking."
                    )
                try:
                    _run_on_system(args, bench, system, chosen, scen, stem)
                finally:
                    exited = sc.triton_exit_note(system)
                    if exited:
                        bench.notes.append(exited)
                    if exited or sys.exc_info()[0] is not None:
                        # The scratch folder goes with the run: keep the evidence.
                        kept = _keep_logs(workdir / "logs", stem)
                        bench.log(f"logs kept in {kept}")
                        bench.notes.append(f"process logs kept in {kept.name}/ (not committed)")
                if system.triton_grpc_url:
                    tritonserver_version = sc.tritonserver_version(system.triton_grpc_url)
                scen["gateway_errors_logged"] = system.logged_errors()
        if "batching" in chosen:
            variants = sc.batching_variants()
            if args.quick:
                variants = [variants[0], variants[2]]  # off and on/100us, 1 instance
            scen["batching"] = sc.batching_study(
                bench, sc.find_ranker_onnx(REPO / "build" / "triton" / "local"), variants=variants
            )
            tritonserver_version = tritonserver_version or scen["batching"]["tritonserver_version"]
        if "capacity" in chosen:
            scen["capacity"] = _capacity(scen, args.base_rps, machine)
        if bench.samples:
            scen["memory"] = sc.memory_summary(bench.samples)
        notes.extend(bench.notes)
    report_obj = report.assemble_report(
        label=label,
        machine=machine,
        versions_=report.versions(ghz_version(ghz), tritonserver_version),
        settings=settings,
        scenarios=scen,
        notes=notes,
        created=created,
    )
    report_obj["scenarios"]["plots"] = _plots(report_obj, stem)
    return report.write_report(report_obj, results_dir, stem=stem.name)


def _keep_logs(logs: Path, stem: Path) -> Path:
    target = stem.with_name(stem.name + ".logs")
    shutil.copytree(logs, target, dirs_exist_ok=True)
    return target


def _run_on_system(
    args: argparse.Namespace,
    bench: sc.Bench,
    system: System,
    chosen: set[str],
    scen: dict[str, Any],
    stem: Path,
) -> None:
    if "sweep" in chosen:
        scen["sweep"] = sc.sweep(bench, system)
    if "rate" in chosen:
        rates = args.rates
        if not rates:
            top = (scen.get("sweep") or {}).get("max_ok_rps") or _probe_max(bench, system)
            rates = sc.rate_steps(top)
            if args.quick:
                rates = rates[::2]
        scen["rate_search"] = sc.rate_search(bench, system, rates)
    base = _sustainable(scen, args.base_rps)
    if base is None and chosen & {"spike", "soak"}:
        base = max(10, int(_probe_max(bench, system) * 0.5))
        bench.notes.append(
            f"spike/soak base rate {base}/s = 50% of a closed-loop probe (no rate search run)"
        )
    if "soak" in chosen and base is not None:
        scen["soak"] = sc.soak(bench, system, max(10, int(base * 0.7)))
    if "ceilings" in chosen:
        entry = None
        for level in (scen.get("sweep") or {}).get("levels", []):
            if level["concurrency"] == bench.ceiling_concurrency:
                entry = level
        scen["ceilings"] = sc.ceilings(bench, system, entry)
    if args.profile:
        scen["profile"] = sc.profile_gateway(bench, system, stem)
    # Last: the local tritonserver (2.51, Python backend) has crashed under the 10x spike,
    # after which the gateway ranks with its fallback; nothing measured after it would be
    # the ranking path.
    if "spike" in chosen and base is not None:
        scen["spike"] = sc.spike(bench, system, base)


def _probe_max(bench: sc.Bench, system: System) -> float:
    run = bench.ghz_run(system, "probe-c32", bench.durations.sweep_step, concurrency=32)
    result, _ = sc.measure(bench, system, run)
    return result.ok_rps


def _sustainable(scen: dict[str, Any], override: int | None) -> int | None:
    if override:
        return override
    rates = (scen.get("rate_search") or {}).get("sustainable_rps") or {}
    for key in ("p99_lt_50ms", "p99_lt_100ms"):
        if rates.get(key):
            return int(rates[key])
    return None


def _capacity(
    scen: dict[str, Any], override: int | None, machine: dict[str, Any]
) -> dict[str, Any]:
    """The capacity plan at the highest rate with p99 < 100 ms, the bound of the brief's claim
    (10k req/s and its cost), and beside it the plan at our stricter p99 < 50 ms target."""
    search = scen.get("rate_search") or {}
    rates = search.get("sustainable_rps") or {}
    measured = override or rates.get("p99_lt_100ms")
    if not measured:
        return {
            "skipped": "no rate with p99 < 100 ms measured (run the rate scenario or pass "
            "--base-rps)"
        }
    cores = int(machine.get("cpu_count") or 1)
    plan = capacity.capacity_plan(float(measured), cores)
    out: dict[str, Any] = {
        "basis": "--base-rps"
        if override
        else "highest open-loop rate with p99 < 100 ms "
        "(the brief's bound for 10k req/s) and no errors",
        "p99_bound_ms": None if override else 100,
        **plan.as_dict(),
        "price": {
            "instance": capacity.PRICE_INSTANCE_TYPE,
            "usd_per_instance_hour": capacity.PRICE_USD_PER_INSTANCE_HOUR,
            "vcpus": capacity.PRICE_VCPUS_PER_INSTANCE,
            "taken_on": capacity.PRICE_TAKEN_ON,
            "source": capacity.PRICE_SOURCE,
        },
    }
    strict = rates.get("p99_lt_50ms")
    if strict and not override:
        tight = capacity.capacity_plan(float(strict), cores)
        out["at_p99_lt_50ms"] = {
            "measured_rps": tight.measured_rps,
            "cores_needed": tight.cores_needed,
            "replicas_needed": tight.replicas_needed,
            "usd_per_million": tight.usd_per_million,
        }
    step = next((s for s in search.get("steps", []) if s["target_rps"] == measured), None)
    if step is not None:
        per_core = capacity.cpu_accounted_rps_per_core(step["ok"], step["server_cpu_s"])
        out["server_cpu_accounted_rps_per_core"] = None if per_core is None else round(per_core, 1)
    return out


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The options, with `connection` (TLS and token for --target) checked and filled in."""
    args = parser.parse_args(argv)
    args.connection = connection_from_args(parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    json_path, md_path = run(args)
    print(f"report: {json_path}\nsummary: {md_path}")
    print(md_path.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    os.chdir(REPO)  # the config's relative paths (build/, ../shared/data) are repo-relative
    sys.exit(main())
