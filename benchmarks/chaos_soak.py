"""Chaos soak (`make bench`): the stack (`make stack`: nginx, gateways, Redis, Postgres, Triton,
under supervisord) at 70% of its sustainable rate for 10 minutes, with Triton, Redis,
Postgres and one gateway each killed (SIGKILL) once at a random moment. The report
(benchmarks/results/chaos-soak-<profile>.json and .md) gives, per fault, the non-OK answers,
the share of degraded answers, p99 while it lasted and the time to recover; over the run, the
error budget used against an availability objective; and the acknowledged events counted in
the store afterwards (lost = acknowledged but not stored).

The sustainable rate is measured first, in the same run: what 32 closed-loop callers get
answered per second (`--probe-seconds`), unless `--rate` gives it.

    python -m benchmarks.chaos_soak [--profile stack|local] [--minutes 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness.chaos import (
    SHEDDING,
    Drive,
    Fault,
    Supervised,
    baseline_report,
    drive,
    events_lost,
    fault_report,
    inject,
    supervised_system,
)
from benchmarks.harness.data import load_users
from benchmarks.harness.ghz import percentile
from benchmarks.harness.report import RESULTS_DIR, machine_description, write_json_and_markdown

CALLERS = 32


def fault_times(
    programs: Sequence[str], duration_s: float, rng: random.Random, margin_s: float = 10.0
) -> list[tuple[float, str]]:
    """One moment per program, in random order, each drawn uniformly inside its own equal
    slice of the run (after `margin_s` of steady traffic), so every fault has time to be seen
    and recovered from before the next."""
    order = list(programs)
    rng.shuffle(order)
    usable = max(duration_s - margin_s, 0.0)
    slice_s = usable / max(len(order), 1)
    return [
        (round(margin_s + i * slice_s + rng.uniform(0.0, slice_s / 2), 3), program)
        for i, program in enumerate(order)
    ]


def error_budget(answers: int, failed: int, objective: float) -> dict[str, Any]:
    """The availability error budget: `1 - objective` of the calls may fail; how much of it
    the run's failures (non-OK beyond shedding) used."""
    allowed = answers * (1.0 - objective)
    return {
        "objective": objective,
        "answers": answers,
        "failed": failed,
        "allowed_failures": round(allowed, 1),
        "budget_used": round(failed / allowed, 4) if allowed > 0 else None,
    }


async def _probe(system: Supervised, users: Sequence[str], seconds: float) -> dict[str, Any]:
    record = Drive()
    stop = asyncio.Event()
    load = asyncio.create_task(drive(system.target, users, record, stop, callers=CALLERS))
    await asyncio.sleep(seconds)
    stop.set()
    await load
    elapsed = record.now_s()
    ok = [a.latency_s * 1000 for a in record.answers if a.code == "OK"]
    return {
        "seconds": round(elapsed, 1),
        "ok_per_s": round(len(ok) / elapsed, 1),
        "p99_ms": round(percentile(sorted(ok), 99), 1) if ok else None,
    }


async def _soak(
    system: Supervised,
    users: Sequence[str],
    rate: float,
    duration_s: float,
    schedule: Sequence[tuple[float, str]],
    client_retries: bool,
) -> tuple[Drive, list[Fault]]:
    record = Drive()
    stop = asyncio.Event()
    load = asyncio.create_task(
        drive(
            system.target,
            users,
            record,
            stop,
            callers=CALLERS,
            rate=rate,
            run_id="soak",
            client_retries=client_retries,
        )
    )
    faults: list[Fault] = []
    try:
        for at_s, program in schedule:
            await asyncio.sleep(max(at_s - record.now_s(), 0.0))
            faults.append(await inject(system, record, program, back_timeout_s=120.0))
        await asyncio.sleep(max(duration_s - record.now_s(), 0.0))
    finally:
        stop.set()
        await load
    return record, faults


def markdown(report: Mapping[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"# Chaos soak ({settings['profile']} profile), {report['started_at']}",
        "",
        f"{CALLERS} callers, {settings['rate']:.0f} req/s open loop "
        f"({settings['rate_fraction']:.0%} of {report['sustainable']['ok_per_s']} req/s answered "
        f"by {CALLERS} closed-loop callers), {settings['duration_s']:.0f} s, each of "
        f"{', '.join(settings['faults'])} killed (SIGKILL) once at a random moment "
        f"(seed {settings['seed']}); supervisord restarts it. Failures count until the next "
        "fault; degraded shares and p99 while the fault lasted (until answers were whole for "
        "2 s and the process served again). "
        + (
            "Callers retry UNAVAILABLE with recsys-client's retry policy (3 attempts, "
            "throttled), as the client package does."
            if settings.get("client_retries")
            else "Callers do not retry: every failure is counted."
        ),
        "",
        "| fault | at s | answers until the next | non-OK (beyond shedding) | lasted s "
        "| degraded | unranked | p99 ms | recovered after s | process back after s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in [{"program": "(before)", "at_s": 0.0, **report["baseline"]}, *report["faults"]]:
        codes = ", ".join(f"{code} {n}" for code, n in sorted(row["non_ok"].items())) or "none"
        lines.append(
            f"| {row['program']} | {row['at_s']:.1f} | {row['answers']} | {codes} "
            f"({row['non_ok_beyond_shedding']}) | {row['lasted_s']} "
            f"| {_share(row['degraded_share'])} "
            f"| {_share(row['unranked_share'])} | {row['p99_ms']} | {row['recovery_s']} "
            f"| {row['process_back_s']} |"
        )
    budget, events = report["error_budget"], report["events"]
    lines += [
        "",
        f"Error budget ({budget['objective']:.1%} of calls OK or shed): {budget['failed']} failed "
        f"of {budget['answers']}, {budget['allowed_failures']} allowed: "
        f"{_share(budget['budget_used'])} used.",
        "",
        f"Events: {events['acknowledged']} acknowledged, {events['stored']} counted in the store "
        f"afterwards, {events['lost']} lost.",
        "",
        f"Machine: {report['machine']['cpu_count']} CPUs ({report['machine']['cpu_model']}), "
        f"load {report['machine']['load_average_at_start']} at start. "
        f"Command: `{report['command']}`.",
        "",
    ]
    return "\n".join(lines)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chaos_soak", description=__doc__)
    parser.add_argument("--profile", choices=("stack", "local"), default="stack")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate-fraction", type=float, default=0.7)
    parser.add_argument("--rate", type=float, help="the sustainable rate, instead of probing")
    parser.add_argument("--probe-seconds", type=float, default=20.0)
    parser.add_argument("--processes", type=int, default=2, help="gateway processes")
    parser.add_argument(
        "--faults",
        default="triton,redis,postgres,gateway1",
        help="supervised programs to kill, comma-separated (the local profile has no stores)",
    )
    parser.add_argument("--objective", type=float, default=0.999, help="availability objective")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-client-retries",
        dest="client_retries",
        action="store_false",
        help="callers do not retry UNAVAILABLE (recsys-client's retry policy is on by default)",
    )
    parser.add_argument("--users", type=Path, default=Path("build/data/users.parquet"))
    parser.add_argument("--out", type=Path, help="JSON report (the .md goes beside it)")
    return parser


def run(options: argparse.Namespace, command: str) -> Path:
    """Runs the soak; returns the JSON report's path."""
    users = [user for user, _ in load_users(options.users)]
    random.Random(options.seed).shuffle(users)
    programs = [p for p in options.faults.split(",") if p]
    duration_s = options.minutes * 60
    schedule = fault_times(programs, duration_s, random.Random(options.seed))
    started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = options.out or RESULTS_DIR / f"chaos-soak-{options.profile}.json"
    work = Path(tempfile.mkdtemp(prefix="recsys-chaos-"))
    try:
        with supervised_system(
            work, profile=options.profile, processes=options.processes
        ) as system:
            sustainable = (
                {"seconds": 0, "ok_per_s": options.rate, "p99_ms": None}
                if options.rate
                else asyncio.run(_probe(system, users, options.probe_seconds))
            )
            rate = float(sustainable["ok_per_s"]) * options.rate_fraction
            time.sleep(2.0)  # the probe's queued work drains before the soak starts
            record, faults = asyncio.run(
                _soak(system, users, rate, duration_s, schedule, options.client_retries)
            )
            end_s = record.now_s()
            runner_alive = system.process.running()
            ranked = system.ranks()
            lost = events_lost(system, record.acknowledged)
    finally:
        # The processes' logs beside the report (git-ignored), for what a fault left there.
        shutil.copytree(work / "logs", out.with_suffix(".logs"), dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    failed = sum(1 for a in record.answers if a.code != "OK" and a.code not in SHEDDING)
    acknowledged = len(set(record.acknowledged))
    report = {
        "started_at": started_at,
        "command": command,
        "machine": machine_description(),
        "settings": {
            "profile": options.profile,
            "processes": options.processes,
            "callers": CALLERS,
            "client_retries": options.client_retries,
            "rate": round(rate, 1),
            "rate_fraction": options.rate_fraction,
            "duration_s": round(end_s, 1),
            "faults": programs,
            "schedule": schedule,
            "seed": options.seed,
        },
        "sustainable": sustainable,
        "runner_kept_running": runner_alive,
        "non_ok": dict(Counter(a.code for a in record.answers if a.code != "OK")),
        "baseline": baseline_report(record, faults, end_s, ranked=ranked),
        "faults": fault_report(record, faults, end_s, ranked=ranked),
        "error_budget": error_budget(len(record.answers), failed, options.objective),
        "events": {"acknowledged": acknowledged, "stored": acknowledged - lost, "lost": lost},
    }
    write_json_and_markdown(out, report, markdown(report))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    options = build_parser().parse_args(args)
    out = run(options, shlex.join(["python", "-m", "benchmarks.chaos_soak", *args]))
    print(out.with_suffix(".md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
