"""The load scenarios: concurrency sweep, open-loop rate steps, spike, soak, ceilings, batching.

Each scenario takes a `Bench` (ghz, data file, durations, a scratch folder) and a running
`System`, and returns a JSON-ready dict that goes into the report under its name. CPU time and
RSS of the measured processes are read from /proc around every ghz run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import tempfile
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from recsys.v1 import recommendation_pb2 as pb
from recsys.v1 import recommendation_pb2_grpc as pb_grpc

from benchmarks.harness import triton_driver
from benchmarks.harness.ghz import GhzResult, GhzRun, run_ghz
from benchmarks.harness.procs import ProcessSample, System, disturbance, echo_system, machine_cpu
from benchmarks.harness.profiling import py_spy_path, py_spy_record, summarize
from benchmarks.harness.target import PLAINTEXT, Connection
from infra.local.tritonserver import TritonServer, TritonServerOptions
from triton_models import repository as repo

P99_BOUNDS_MS = (100, 50, 25)
"""Rate search reports the highest rate keeping p99 under each bound."""
MB = 1024 * 1024


@dataclass(frozen=True)
class Durations:
    """How long each part runs, in seconds."""

    warmup: float = 5.0
    sweep_step: float = 15.0
    rate_step: float = 15.0
    spike_pre: float = 15.0
    spike: float = 30.0
    spike_post: float = 30.0
    soak: float = 600.0
    soak_window: float = 30.0
    ceiling: float = 15.0
    batching: float = 15.0
    profile: float = 15.0

    @staticmethod
    def quick() -> Durations:
        """A 1-2 minute smoke run."""
        return Durations(
            warmup=2.0,
            sweep_step=3.0,
            rate_step=3.0,
            spike_pre=3.0,
            spike=5.0,
            spike_post=5.0,
            soak=20.0,
            soak_window=5.0,
            ceiling=3.0,
            batching=3.0,
            profile=5.0,
        )


@dataclass
class Bench:
    """Everything the scenarios share."""

    ghz: Path
    data_file: Path
    workdir: Path
    durations: Durations = field(default_factory=Durations)
    sweep_levels: tuple[int, ...] = (1, 8, 32, 64, 128)
    ceiling_concurrency: int = 32
    rate_concurrency: int = 64
    """ghz workers of open-loop runs; with --async each tick starts a call anyway."""
    timeout_s: float = 2.0
    connections: int = 1
    """gRPC connections of every run (at most its workers): several gateway processes on one
    port need several, since the kernel spreads connections, not calls."""
    log: Callable[[str], None] = print
    samples: list[ProcessSample] = field(default_factory=list)
    """Every /proc sample taken, for the memory summary."""
    notes: list[str] = field(default_factory=list)

    def ghz_run(self, system: System, name: str, duration_s: float, **kwargs: Any) -> GhzRun:
        workers = kwargs.get("concurrency", GhzRun.concurrency)
        kwargs.setdefault("connections", min(self.connections, workers))
        kwargs.setdefault("transport", tuple(system.connection.ghz_args(self.workdir)))
        return GhzRun(
            target=system.target,
            data_file=self.data_file,
            duration_s=duration_s,
            name=name,
            timeout_s=kwargs.pop("timeout_s", self.timeout_s),
            **kwargs,
        )


FALLBACK_METRIC = "recsys_ranker_failures_total"
"""Gateway counter of answers the fallback ranked because Triton could not (all reasons)."""
MAX_FALLBACK_SHARE = 0.01
"""A rate step counts as sustained only if Triton ranked at least 99% of its answers."""


def fallback_answers(system: System) -> float | None:
    """Answers the system's gateways have ranked with the fallback so far; None when a
    gateway's /metrics cannot be read (or the system has none, like the echo server)."""
    if not system.metrics_urls:
        return None
    total = 0.0
    for url in system.metrics_urls:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            return None
        total += sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == FALLBACK_METRIC
        )
    return total


def _sample(bench: Bench, system: System) -> list[ProcessSample]:
    samples = system.sample()
    bench.samples.extend(samples)
    return samples


def _cpu(samples: Sequence[ProcessSample]) -> dict[int, float]:
    return {s.pid: s.cpu_s for s in samples}


def _rss_by_role(samples: Sequence[ProcessSample]) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in samples:
        out[s.role] = out.get(s.role, 0.0) + s.rss_bytes / MB
    return {k: round(v, 1) for k, v in sorted(out.items())}


def measure(
    bench: Bench, system: System, run: GhzRun, *, interval_s: float = 1.0
) -> tuple[GhzResult, dict[str, Any]]:
    """One ghz run with CPU time and RSS of the server processes around it, and what else
    used the machine's CPUs meanwhile (`machine`: see procs.disturbance)."""
    machine_before = machine_cpu()
    before = _sample(bench, system)
    fallback_before = fallback_answers(system)
    result = run_ghz(bench.ghz, run, bench.workdir / "ghz", interval_s=interval_s)
    fallback_after = fallback_answers(system)
    after = _sample(bench, system)
    machine_after = machine_cpu()
    cpu_before = _cpu(before)
    cpu_by_role: dict[str, float] = {}
    for s in after:
        cpu_by_role[s.role] = (
            cpu_by_role.get(s.role, 0.0) + s.cpu_s - cpu_before.get(s.pid, s.cpu_s)
        )
    server_cpu = sum(cpu_by_role.values())
    cpu_by_role = dict(sorted(cpu_by_role.items()))
    entry = result.as_dict(with_intervals=False)
    if system.remote:  # its processes run elsewhere: no server CPU to count
        entry["server_cpu_s"] = entry["server_cpu_cores"] = None
    else:
        entry["server_cpu_s"] = round(server_cpu, 2)
        entry["server_cpu_cores"] = (
            round(server_cpu / result.duration_s, 2) if result.duration_s else 0
        )
    # CPU milliseconds per answered request, by process role: where the machine's time goes.
    cpu_by_role["ghz and driver"] = machine_after.bench_s - machine_before.bench_s
    entry["cpu_ms_per_request"] = {
        role: round(1000 * cpu / max(result.ok, 1), 2) for role, cpu in cpu_by_role.items()
    }
    entry["rss_mb"] = _rss_by_role(after)
    entry["machine"] = disturbance(machine_before, machine_after, server_cpu)
    fallback = ""
    if fallback_before is not None and fallback_after is not None:
        entry["fallback_answers"] = int(fallback_after - fallback_before)
        entry["fallback_share"] = round(entry["fallback_answers"] / max(result.ok, 1), 4)
        fallback = f"  fallback {entry['fallback_share']:.1%}"
    lat = result.latency
    machine = entry["machine"]
    disturbed = (
        f"  DISTURBED (steal {machine['steal_share']:.1%}, "
        f"outside {machine['outside_cores']:.2f} cores)"
        if machine["disturbed"]
        else ""
    )
    bench.log(
        f"  {run.name}: {result.ok_rps:8.1f} ok/s  p50 {lat.p50_ms:6.2f}  p99 {lat.p99_ms:7.2f}"
        f"  max {lat.max_ms:7.1f} ms  errors {result.errors}{fallback}{disturbed}"
    )
    return result, entry


def warm_up(bench: Bench, system: System) -> None:
    """Unmeasured calls: imports, caches, connection set-up."""
    if bench.durations.warmup > 0:
        run_ghz(
            bench.ghz,
            bench.ghz_run(system, "warmup", bench.durations.warmup, concurrency=8),
            bench.workdir / "ghz",
        )


# ------------------------------------------------------------------------------ scenarios


def sweep(bench: Bench, system: System) -> dict[str, Any]:
    """Closed-loop runs at each concurrency level."""
    bench.log(f"sweep: concurrency {list(bench.sweep_levels)}")
    levels = []
    for c in bench.sweep_levels:
        run = bench.ghz_run(system, f"sweep-c{c}", bench.durations.sweep_step, concurrency=c)
        _, entry = measure(bench, system, run)
        levels.append({"concurrency": c, **entry})
    best = max(levels, key=lambda e: e["ok_rps"]) if levels else None
    return {
        "system": system.kind,
        "mode": "closed loop (-c workers, no rate limit)",
        "duration_s": bench.durations.sweep_step,
        "levels": levels,
        "max_ok_rps": best["ok_rps"] if best else None,
        "max_at_concurrency": best["concurrency"] if best else None,
    }


def rate_steps(max_rps: float) -> list[int]:
    """Target rates around a closed-loop maximum: 30% .. 110% of it, rounded to tens."""
    fractions = (0.3, 0.5, 0.65, 0.8, 0.9, 1.0, 1.1)
    steps = sorted({max(10, int(round(max_rps * f / 10.0)) * 10) for f in fractions})
    return steps


def sustainable_rates(
    steps: Sequence[Mapping[str, Any]], bounds_ms: Sequence[int] = P99_BOUNDS_MS
) -> dict[str, int | None]:
    """Highest target rate whose step had no errors, p99 under the bound, kept up (OK rate
    >= 95% of the target) and had Triton rank its answers (fallback share <= 1%)."""
    out: dict[str, int | None] = {}
    for bound in bounds_ms:
        good = [int(s["target_rps"]) for s in steps if not _misses(s, int(s["target_rps"]), bound)]
        out[f"p99_lt_{bound}ms"] = max(good) if good else None
    return out


def _misses(entry: Mapping[str, Any], rate: int, bound_ms: float) -> bool:
    return bool(
        entry["errors"] > 0
        or entry["latency_ms"]["p99_ms"] >= bound_ms
        or entry["ok_rps"] < 0.95 * rate
        or entry.get("fallback_share", 0.0) > MAX_FALLBACK_SHARE
    )


def median_attempt(attempts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The attempt with the median p99 (an attempt with errors counts as the slowest)."""
    ranked = sorted(
        attempts,
        key=lambda e: math.inf if e["errors"] > 0 else float(e["latency_ms"]["p99_ms"]),
    )
    return ranked[(len(ranked) - 1) // 2]


def rate_search(
    bench: Bench, system: System, rates: Sequence[int], *, attempts: int = 3
) -> dict[str, Any]:
    """Open-loop constant-rate steps (ghz --rps --async), lowest first; stops after the first
    step that misses the loosest bound, since higher rates only queue more.

    One stall of this shared VM can spoil a step's p99, so a step whose first run misses a
    bound that the step below met (for the first step: any bound) is run `attempts` times in
    all, and the attempt with the median p99 stands for it; every attempt is kept in the step.
    """
    bench.log(f"rate search: {list(rates)} req/s open loop")
    steps = []
    met_below = dict.fromkeys(P99_BOUNDS_MS, True)
    for rate in sorted(rates):

        def attempt(index: int, rate: int = rate) -> dict[str, Any]:
            suffix = f"-try{index}" if index else ""
            run = bench.ghz_run(
                system,
                f"rate-{rate}{suffix}",
                bench.durations.rate_step,
                concurrency=bench.rate_concurrency,
                rps=rate,
                open_loop=True,
            )
            return measure(bench, system, run)[1]

        entry = attempt(0)
        if any(_misses(entry, rate, b) and met_below[b] for b in P99_BOUNDS_MS):
            tries = [entry, *(attempt(i) for i in range(1, attempts))]
            entry = dict(median_attempt(tries))
            entry["attempts"] = [
                {
                    "p99_ms": t["latency_ms"]["p99_ms"],
                    "errors": t["errors"],
                    "ok_rps": t["ok_rps"],
                    "fallback_share": t.get("fallback_share"),
                }
                for t in tries
            ]
        steps.append({"target_rps": rate, **entry})
        met_below = {b: not _misses(entry, rate, b) for b in P99_BOUNDS_MS}
        if _misses(entry, rate, max(P99_BOUNDS_MS)):
            break
    return {
        "system": system.kind,
        "mode": "open loop (ghz --rps R --async)",
        "step_s": bench.durations.rate_step,
        "attempts_when_missed": attempts,
        "max_fallback_share": MAX_FALLBACK_SHARE,
        "steps": steps,
        "sustainable_rps": sustainable_rates(steps),
    }


def recovery_seconds(
    intervals: Sequence[Mapping[str, Any]], baseline_p99_ms: float, *, interval_s: float = 1.0
) -> float | None:
    """Seconds after the spike until a bucket is error-free with p99 within 2x the baseline
    (and at most baseline + 5 ms noise); None when it never recovered."""
    limit = max(2 * baseline_p99_ms, baseline_p99_ms + 5.0)
    for bucket in intervals:
        if bucket["errors"] == 0 and bucket["count"] > 0 and bucket["p99_ms"] <= limit:
            return float(bucket["start_s"]) + interval_s
    return None


def spike(bench: Bench, system: System, base_rps: int, factor: int = 10) -> dict[str, Any]:
    """Baseline rate, then `factor`x for `spike` seconds, then baseline again (open loop)."""
    d = bench.durations
    bench.log(f"spike: {base_rps} -> {base_rps * factor} -> {base_rps} req/s")
    phases: list[tuple[str, dict[str, Any]]] = []
    post_intervals: list[dict[str, Any]] = []
    for phase, rate, seconds in (
        ("before", base_rps, d.spike_pre),
        ("spike", base_rps * factor, d.spike),
        ("after", base_rps, d.spike_post),
    ):
        run = bench.ghz_run(
            system,
            f"spike-{phase}",
            seconds,
            concurrency=bench.rate_concurrency,
            rps=rate,
            open_loop=True,
            timeout_s=1.0,  # a call queued for over a second has failed for the client anyway
        )
        result, entry = measure(bench, system, run)
        entry["target_rps"] = rate
        entry["intervals"] = [asdict(i) for i in result.intervals]
        if phase == "after":
            post_intervals = entry["intervals"]
        phases.append((phase, entry))
    baseline_p99 = phases[0][1]["latency_ms"]["p99_ms"]
    return {
        "system": system.kind,
        "base_rps": base_rps,
        "factor": factor,
        "phases": phases,
        "recovery_s": recovery_seconds(post_intervals, baseline_p99),
        "errors_during_spike": phases[1][1]["errors"],
        "status_codes_during_spike": phases[1][1]["status_codes"],
    }


def p99_drift(window_p99s: Sequence[float]) -> float | None:
    """Relative change of p99 from the first quarter of the windows to the last quarter
    (medians of each), positive when latency grew; None with fewer than two windows."""
    if len(window_p99s) < 2:
        return None
    k = max(1, len(window_p99s) // 4)
    first = statistics.median(window_p99s[:k])
    last = statistics.median(window_p99s[-k:])
    return (last - first) / first if first > 0 else None


def soak(bench: Bench, system: System, rate: int) -> dict[str, Any]:
    """Consecutive open-loop windows at `rate`; RSS sampled before the first and after each."""
    d = bench.durations
    n = max(1, math.ceil(d.soak / d.soak_window))
    bench.log(f"soak: {rate} req/s for {n} x {d.soak_window:.0f} s")
    start_samples = _sample(bench, system)
    windows = []
    rss_series = [_rss_by_role(start_samples)]
    for i in range(n):
        run = bench.ghz_run(
            system,
            f"soak-{i}",
            d.soak_window,
            concurrency=bench.rate_concurrency,
            rps=rate,
            open_loop=True,
        )
        _, entry = measure(bench, system, run)
        windows.append(entry)
        rss_series.append(entry["rss_mb"])
    start_gw = rss_series[0].get("gateway", 0.0)
    end_gw = rss_series[-1].get("gateway", 0.0)
    errors = sum(int(w["errors"]) for w in windows)
    fallbacks = [w["fallback_answers"] for w in windows if "fallback_answers" in w]
    fallback_share = (
        sum(fallbacks) / max(1, sum(int(w["ok"]) for w in windows))
        if len(fallbacks) == len(windows)
        else None
    )
    disturbed = [i for i, w in enumerate(windows) if w["machine"]["disturbed"]]
    return {
        "system": system.kind,
        "target_rps": rate,
        "duration_s": n * d.soak_window,
        "window_s": d.soak_window,
        "windows": windows,
        "errors": errors,
        "fallback_share": fallback_share,
        "p99_drift": p99_drift([w["latency_ms"]["p99_ms"] for w in windows]),
        # Windows where the hypervisor or other jobs took CPU (procs.disturbance); the drift
        # target is judged on every window, this second figure only says how much they weigh.
        "disturbed_windows": disturbed,
        "p99_drift_undisturbed": p99_drift(
            [w["latency_ms"]["p99_ms"] for i, w in enumerate(windows) if i not in disturbed]
        ),
        "rss_mb": {"start": rss_series[0], "end": rss_series[-1]},
        "rss_series_mb": rss_series,
        "rss_growth": (end_gw - start_gw) / start_gw if start_gw else None,
    }


def sample_reply(
    target: str, data_file: Path, connection: Connection = PLAINTEXT
) -> pb.RecommendResponse | None:
    """The answer to the data file's first request, None when the call fails."""
    import json

    first = json.loads(data_file.read_text(encoding="utf-8"))[0]
    context = pb.RequestContext(
        device=pb.Device.Value(first["context"]["device"]),
        page=pb.Page.Value(first["context"]["page"]),
        country=first["context"].get("country", ""),
    )
    request = pb.RecommendRequest(
        user_id=first["user_id"], num_items=first["num_items"], context=context
    )
    try:
        with connection.channel(target) as channel:
            reply: pb.RecommendResponse = pb_grpc.RecommendationServiceStub(channel).Recommend(
                request, timeout=5.0, metadata=connection.call_metadata()
            )
    except grpc.RpcError:
        return None
    return reply


def describe_reply(reply: pb.RecommendResponse | None) -> dict[str, Any]:
    """What answered: model version, degraded flags, size (recorded with the settings)."""
    if reply is None:
        return {"error": "the sample Recommend call failed"}
    return {
        "model_version": reply.model_version,
        "experiment_id": reply.experiment_id,
        "degraded": reply.degraded,
        "degraded_reasons": [pb.DegradedReason.Name(r) for r in reply.degraded_reasons],
        "items": len(reply.recommendations),
        "response_bytes": reply.ByteSize(),
    }


def capture_response(target: str, data_file: Path, out: Path) -> Path | None:
    """One real Recommend response, serialized, for the echo server to repeat."""
    reply = sample_reply(target, data_file)
    if reply is None:
        return None
    out.write_bytes(reply.SerializeToString())
    return out


def triton_exit_note(system: System) -> str | None:
    """A sentence naming Triton's pid and its last log lines when the Triton this system
    started has exited; None while it runs (or when there is none)."""
    triton = system.triton
    if triton is None or triton.pid is None or triton.is_running():
        return None
    tail = " | ".join(line.strip() for line in triton.log_tail(8).splitlines() if line.strip())
    return f"Triton (pid {triton.pid}) had exited during the run; its log ended: {tail[-1500:]}"


FLOOR_RPS = 100
"""Open-loop rate of the echo server's latency-floor run."""


def ceilings(
    bench: Bench, system: System, gateway_entry: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Gateway vs the echo server (same ghz settings) and vs Triton alone (same concurrency)."""
    c = bench.ceiling_concurrency
    d = bench.durations
    bench.log(f"ceilings at concurrency {c}")
    if gateway_entry is None:
        run = bench.ghz_run(system, f"gateway-c{c}", d.ceiling, concurrency=c)
        _, gateway_entry = measure(bench, system, run)
    response = capture_response(system.target, bench.data_file, bench.workdir / "response.bin")
    echo_entry: dict[str, Any]
    with echo_system(bench.workdir, response) as echo:
        warm_up(bench, echo)
        _, echo_entry = measure(
            bench, echo, bench.ghz_run(echo, f"echo-c{c}", d.ceiling, concurrency=c)
        )
        # The latency floor of this machine: a server doing no work, at a rate it idles at.
        # Its p99 is what scheduling noise alone costs one hop; the gateway path has three
        # (ghz -> gateway -> Triton -> Python-backend stub).
        _, floor_entry = measure(
            bench,
            echo,
            bench.ghz_run(
                echo,
                f"echo-{FLOOR_RPS}rps",
                d.ceiling,
                concurrency=bench.rate_concurrency,
                rps=FLOOR_RPS,
                open_loop=True,
            ),
        )
    out: dict[str, Any] = {
        "concurrency": c,
        "gateway_rps": gateway_entry["ok_rps"],
        "gateway_p99_ms": gateway_entry["latency_ms"]["p99_ms"],
        "echo_rps": echo_entry["ok_rps"],
        "echo_p99_ms": echo_entry["latency_ms"]["p99_ms"],
        "echo_response_bytes": response.stat().st_size if response else None,
        "latency_floor": {
            "rps": FLOOR_RPS,
            "open_loop": True,
            **floor_entry["latency_ms"],
        },
        "ratio_vs_echo": gateway_entry["ok_rps"] / echo_entry["ok_rps"]
        if echo_entry["ok_rps"]
        else None,
        "triton_alone_rps": None,
        "ratio_vs_triton": None,
    }
    triton_exited = triton_exit_note(system)
    if triton_exited:
        out["triton_skipped"] = triton_exited
    elif system.triton_grpc_url and system.ranker_model:
        result = triton_driver.drive(
            bench.ghz,
            system.triton_grpc_url,
            system.ranker_model,
            workdir=bench.workdir / "triton-alone",
            concurrency=c,
            duration_s=d.ceiling,
            rows=500,
            server_pid=system.triton.pid if system.triton else None,
        )
        out["triton_alone"] = result.as_dict()
        out["triton_alone_rps"] = result.rps
        out["ratio_vs_triton"] = gateway_entry["ok_rps"] / result.rps if result.rps else None
        bench.log(f"  triton alone ({system.ranker_model}): {result.rps:.1f} req/s")
    else:
        out["triton_skipped"] = (
            "no ranker ensemble (ranker_v2 / ranker_v3) in build/triton/local; the gateway "
            "ranks with the popularity fallback"
        )
    return out


# --------------------------------------------------------------------- dynamic batching study


def tiny_ranker_onnx(features: int = 32, hidden: int = 64, seed: int = 7) -> bytes:
    """features [B, F] -> score [B, 1]: a two-layer MLP with a sigmoid, B dynamic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(features, hidden)).astype(np.float32) / np.sqrt(features)
    w2 = rng.normal(size=(hidden, 1)).astype(np.float32) / np.sqrt(hidden)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", ["features", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("MatMul", ["a", "w2"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["score"]),
        ],
        name="bench_ranker",
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", features])],
        outputs=[helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def find_ranker_onnx(repository: Path) -> Path | None:
    """The ONNX file of the ranker the local repository serves (ranker_v2's composing model
    first), or any model.onnx under a folder named ranker*; None when there is none."""
    if not repository.is_dir():
        return None
    for ensemble in ("ranker_v2", "ranker_v3"):
        config_path = repository / ensemble / repo.CONFIG_FILENAME
        if not config_path.is_file():
            continue
        config = repo.read_config(repository / ensemble)
        for step in config.ensemble_scheduling.step:
            found = _latest_onnx(repository / step.model_name)
            if found is not None:
                return found
    for model_dir in sorted(repository.glob("ranker*")):
        found = _latest_onnx(model_dir)
        if found is not None:
            return found
    return None


def _latest_onnx(model_dir: Path) -> Path | None:
    versions = sorted(
        (int(p.name) for p in model_dir.glob("[0-9]*") if p.name.isdigit()), reverse=True
    )
    for version in versions:
        candidate = model_dir / str(version) / repo.ONNX_FILENAME
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class BatchingVariant:
    name: str
    dynamic_batching: repo.DynamicBatching | None
    instance_count: int


def batching_variants(
    delays_us: Sequence[int] = (0, 100, 1_000, 5_000), instances: Sequence[int] = (1, 2)
) -> list[BatchingVariant]:
    """Batching off and on (each queue delay), at each instance count."""
    out = []
    for count in instances:
        out.append(BatchingVariant(f"off/{count}inst", None, count))
        for delay in delays_us:
            out.append(
                BatchingVariant(
                    f"on/{delay}us/{count}inst",
                    repo.DynamicBatching(max_queue_delay_microseconds=delay),
                    count,
                )
            )
    return out


def batching_gains(
    variants: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], float | None]:
    """Each variant's throughput relative to batching off at the same instance count (and its
    Triton CPU per request, when measured, as `cpu_gain_vs_off`), and the best throughput
    gain of a batching-on variant."""
    off = {v["instance_count"]: v for v in variants if not v["dynamic_batching"]}
    out = []
    best: float | None = None
    for v in variants:
        base = off.get(v["instance_count"], {})
        gain = v["rps"] / base["rps"] if base.get("rps") else None
        base_cpu, cpu = base.get("triton_cpu_ms_per_request"), v.get("triton_cpu_ms_per_request")
        cpu_gain = base_cpu / cpu if base_cpu and cpu else None
        out.append(
            {
                **v,
                "gain_vs_off": None if gain is None else round(gain, 3),
                "cpu_gain_vs_off": None if cpu_gain is None else round(cpu_gain, 3),
            }
        )
        if v["dynamic_batching"] and gain is not None:
            best = gain if best is None else max(best, gain)
    return out, best


@contextlib.contextmanager
def _variant_server(
    onnx_bytes: bytes, variant: BatchingVariant, rows: int, workdir: Path
) -> Iterator[TritonServer]:
    import onnx

    inputs, outputs = repo.tensor_specs_from_onnx(onnx.load_from_string(onnx_bytes))
    spec = repo.OnnxModelSpec(
        name="ranker_bench",
        inputs=inputs,
        outputs=outputs,
        max_batch_size=rows * 8,
        dynamic_batching=variant.dynamic_batching,
        instance_count=variant.instance_count,
        intra_op_threads=1,
    )
    with tempfile.TemporaryDirectory(prefix="batching-", dir=workdir) as scratch:
        repository = Path(scratch) / "repository"
        repo.write_onnx_model(repository, spec, onnx_bytes, flavour=repo.Flavour.LOCAL)
        log = workdir / "logs" / f"triton-{variant.name.replace('/', '-')}.log"
        server = TritonServer(
            TritonServerOptions(model_repository=repository).with_free_ports(), log_path=log
        )
        with server:
            yield server


def batching_study(
    bench: Bench,
    onnx_model: Path | None,
    *,
    variants: Sequence[BatchingVariant],
    concurrency: int = 32,
    rows: int = 500,
) -> dict[str, Any]:
    """Throughput, p99 and achieved batch size of each variant at the same concurrency."""
    if onnx_model is not None:
        onnx_bytes = onnx_model.read_bytes()
        source = f"ranker from {onnx_model}"
    else:
        onnx_bytes = tiny_ranker_onnx()
        source = "generated MLP (32 features, 64 hidden): no ranker in build/triton/local"
    bench.log(f"batching study: {len(variants)} variants, concurrency {concurrency}, {source}")
    results = []
    server_version = None
    for variant in variants:
        with _variant_server(onnx_bytes, variant, rows, bench.workdir) as server:
            server_version = server_version or tritonserver_version(server.grpc_url)
            before = asyncio.run(triton_driver.statistics(server.grpc_url, "ranker_bench"))
            load = triton_driver.drive(
                bench.ghz,
                server.grpc_url,
                "ranker_bench",
                workdir=bench.workdir / "batching",
                concurrency=concurrency,
                duration_s=bench.durations.batching,
                rows=rows,
                server_pid=server.pid,
            )
            after = asyncio.run(triton_driver.statistics(server.grpc_url, "ranker_bench"))
        stats = after.minus(before)
        entry = {
            "variant": variant.name,
            "dynamic_batching": variant.dynamic_batching is not None,
            "max_queue_delay_us": variant.dynamic_batching.max_queue_delay_microseconds
            if variant.dynamic_batching
            else None,
            "instance_count": variant.instance_count,
            "rps": round(load.rps, 1),
            "p99_ms": round(load.latency.p99_ms, 3),
            "p50_ms": round(load.latency.p50_ms, 3),
            "errors": load.errors,
            "inference_count": stats.inference_count,
            "execution_count": stats.execution_count,
            "rows_per_execution": round(stats.rows_per_execution, 1),
            "requests_per_execution": round(stats.requests_per_execution(rows), 2),
            "mean_queue_ms": round(stats.mean_queue_ms, 3),
            "mean_compute_ms": round(stats.mean_compute_ms, 3),
            # Triton's own CPU per request: its efficiency apart from the ghz client, which
            # shares the machine's CPUs.
            "triton_cpu_ms_per_request": load.server_cpu_ms_per_request,
        }
        bench.log(
            f"  {variant.name}: {load.rps:7.1f} req/s  p99 {load.latency.p99_ms:7.2f} ms  "
            f"{entry['requests_per_execution']} req/exec  errors {load.errors}"
        )
        results.append(entry)
    with_gains, best = batching_gains(results)
    return {
        "model_source": source,
        "concurrency": concurrency,
        "rows_per_request": rows,
        "duration_s": bench.durations.batching,
        "client": "ghz (protoset from tritonclient's descriptors), one connection, closed loop",
        "variants": with_gains,
        "best_gain_vs_off": None if best is None else round(best, 3),
        "tritonserver_version": server_version,
    }


def tritonserver_version(url: str) -> str | None:
    async def fetch() -> str | None:
        import tritonclient.grpc.aio as grpcclient

        client = grpcclient.InferenceServerClient(url)
        try:
            meta = await client.get_server_metadata(as_json=True)
        finally:
            await client.close()
        version = meta.get("version")
        return str(version) if version else None

    try:
        return asyncio.run(fetch())
    except Exception:  # a version is nice to have, never worth failing the run
        return None


def memory_summary(samples: Sequence[ProcessSample]) -> dict[str, Any]:
    """Largest RSS seen per role and per gateway process over the whole run."""
    per_process: dict[int, tuple[str, int]] = {}
    for s in samples:
        role, peak = per_process.get(s.pid, (s.role, 0))
        per_process[s.pid] = (role, max(peak, s.rss_bytes))
    gateway = [peak for role, peak in per_process.values() if role == "gateway"]
    triton = [peak for role, peak in per_process.values() if role == "triton"]
    return {
        "max_gateway_rss_mb": round(max(gateway) / MB, 1) if gateway else None,
        "gateway_processes": len(gateway),
        "max_triton_tree_rss_mb": round(sum(triton) / MB, 1) if triton else None,
    }


def profile_gateway(
    bench: Bench, system: System, stem: Path, run_name: str = "profile-c32"
) -> dict[str, Any]:
    """py-spy on one gateway process while ghz drives it at concurrency 32 (ghz run
    `run_name`): where its time goes, and the collapsed stacks next to `stem`."""
    if py_spy_path() is None:
        bench.log("profile: py-spy is not installed (make setup)")
        return {"profiler": "py-spy", "skipped": "py-spy is not installed: run `make setup`"}
    gateways = [pid for pid, role in system.pids() if role == "gateway"]
    if not gateways:
        return {"profiler": "py-spy", "skipped": "no gateway process found"}
    output = stem.with_name(stem.name + ".py-spy.folded")
    seconds = bench.durations.profile
    recorder = py_spy_record(gateways[0], seconds, output)
    run = bench.ghz_run(system, run_name, seconds + 2, concurrency=32)
    measure(bench, system, run)
    _, stderr = recorder.communicate(timeout=seconds + 60)
    if recorder.returncode != 0 or not output.is_file():
        return {"profiler": "py-spy", "failed": stderr.decode(errors="replace")[-1000:]}
    return {
        "profiler": "py-spy",
        "pid": gateways[0],
        "seconds": seconds,
        "concurrency": 32,
        "output": output.name,
        **summarize(output.read_text(encoding="utf-8")),
    }
