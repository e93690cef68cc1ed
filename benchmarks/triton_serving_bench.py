"""Triton's CPU per ranking request under each serving choice (issue #18, part 4).

One real ``tritonserver`` (the nvidia-pytriton wheel's, local flavour: Python backend running
onnxruntime) serves the real ``ranker_v2`` ONNX model of ``build/`` several times over, once
per variant of :class:`triton_models.ranker_repositories.ServingOptions` (each variant a model pair
``<variant>_onnx`` plus its one-step ensemble ``<variant>``, written by ``write_ranker`` as
``make models`` writes the real ones). One server for all variants keeps the comparison side
by side: the variants take turns in every round, under the same background load.

Each target (a variant's ensemble, or for some its ONNX model called directly) gets three
loads, each sending requests of 500-600 real feature rows (the gateway ranks ~550 candidates)
through a grpc.aio channel with the gateway's own request encoder:

- ``open450`` / ``open1000``: open loop, Poisson arrivals at 450 and 1,000 requests/s (the
  gateway's full-path rate when issue #18 was filed, and its target): how the gateway
  loads Triton, a few requests in flight at a time;
- ``closed32``: closed loop, 32 callers: Triton driven hard alone (the issue's 0.54 ms).

Per target and load: tritonserver's CPU per request (its process tree: the server and its
Python-backend stubs, from /proc), achieved rate, latency median/p99, and Triton's own
counters of the composing model (requests merged per execution, queue and compute time). The
rounds are repeated and each figure is the median over rounds.

Run: ``.venv/bin/python -m benchmarks.triton_serving_bench``; writes
``benchmarks/results/triton_serving_bench.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import uvloop

from benchmarks.harness.loops import closed_loop, open_loop
from benchmarks.harness.procs import tree_cpu_seconds
from benchmarks.harness.report import (
    add_triton_bench_arguments,
    machine_description,
    package_version,
    write_json_and_markdown,
)
from benchmarks.harness.triton_driver import statistics as statistics_of
from gateway.stages.rank import MODEL_INFER_METHOD, InferRequestEncoder, read_scores
from infra.local.tritonserver import TritonServer, TritonServerOptions
from triton_models import repository as repo
from triton_models.dataset import RankingSet
from triton_models.ranker_repositories import ServingOptions, write_ranker

LOADS = ("open450", "open1000", "closed32")


@dataclass(frozen=True)
class Variant:
    """One way of serving the ranker."""

    name: str
    """Model name of the ensemble (``<name>_onnx`` is its composing model)."""
    options: ServingOptions
    """Batching and instances."""
    direct_too: bool = False
    """Also measure calling ``<name>_onnx`` directly (no ensemble hop)."""


def variants(defaults: ServingOptions) -> list[Variant]:
    """The variants compared: the settings before issue #18, one setting changed at a time
    from them, and the current defaults (``ServingOptions()``) when they differ from all."""
    before = dataclasses.replace(
        defaults, preferred_batch_sizes=(500, 1000, 2000), max_queue_delay_us=100, instance_count=2
    )
    nopref = dataclasses.replace(before, preferred_batch_sizes=())
    chosen = [
        Variant("before_pref500_d100_i2", before, direct_too=True),
        Variant("nopref_d100_i2", nopref),
        Variant("nopref_d1000_i2", dataclasses.replace(nopref, max_queue_delay_us=1000)),
        Variant("nopref_d2000_i2", dataclasses.replace(nopref, max_queue_delay_us=2000)),
        Variant("nopref_d100_i1", dataclasses.replace(nopref, instance_count=1)),
        Variant(
            "nopref_d1000_i1",
            dataclasses.replace(nopref, max_queue_delay_us=1000, instance_count=1),
        ),
    ]
    if all(variant.options != defaults for variant in chosen):
        chosen.append(Variant("defaults", defaults, direct_too=True))
    return chosen


def targets(chosen: Sequence[Variant]) -> list[tuple[str, str]]:
    """(label, model called) for every measured target."""
    out: list[tuple[str, str]] = []
    for variant in chosen:
        out.append((variant.name, variant.name))
        if variant.direct_too:
            out.append((f"{variant.name} (direct)", f"{variant.name}_onnx"))
    return out


class _Caller:
    """The gateway's request path without its breaker: encoded request, raw stub call."""

    def __init__(self, channel: grpc.aio.Channel, model: str) -> None:
        from tritonclient.grpc import service_pb2

        self._infer: grpc.aio.UnaryUnaryMultiCallable[bytes, Any] = channel.unary_unary(
            MODEL_INFER_METHOD,
            request_serializer=None,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        self._encoder = InferRequestEncoder(model, 0)

    async def __call__(self, rows: npt.NDArray[np.float32]) -> float:
        started = time.perf_counter()
        reply = await self._infer(self._encoder.encode(rows), timeout=5.0)
        if read_scores(reply, rows.shape[0]) is None:
            raise RuntimeError("misshapen reply")
        return time.perf_counter() - started


_ERRORS = (grpc.aio.AioRpcError, RuntimeError)
"""What a call to Triton may raise under load: counted, not fatal."""


async def _phase(
    url: str,
    channel: grpc.aio.Channel,
    pid: int,
    model: str,
    composing: str,
    load: str,
    batches: list[npt.NDArray[np.float32]],
    duration_s: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    caller = _Caller(channel, model)
    before = await statistics_of(url, composing)
    cpu_before = tree_cpu_seconds(pid)
    if load.startswith("open"):
        got = await open_loop(caller, batches, float(load[4:]), duration_s, rng, errors=_ERRORS)
    else:
        got = await closed_loop(
            caller, batches, int(load[6:]), duration_s=duration_s, errors=_ERRORS
        )
    cpu = tree_cpu_seconds(pid) - cpu_before
    stats = (await statistics_of(url, composing)).minus(before)
    latencies, errors, wall = got.latencies_s, got.errors, got.wall_s
    ok = max(len(latencies), 1)
    mean_rows = float(np.mean([len(b) for b in batches]))
    return {
        "triton_cpu_ms_per_request": 1000 * cpu / ok,
        "rps": len(latencies) / wall,
        "errors": errors,
        "median_ms": 1000 * float(np.median(latencies)) if latencies else None,
        "p99_ms": 1000 * float(np.quantile(latencies, 0.99)) if latencies else None,
        "requests_per_execution": stats.requests_per_execution(round(mean_rows)),
        "mean_queue_ms": stats.mean_queue_ms,
        "mean_compute_ms_per_execution": stats.mean_compute_ms,
    }


def _median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = rounds[0].keys()
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in rounds if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    out["rounds"] = rounds
    return out


async def measure(
    url: str,
    pid: int,
    chosen: Sequence[Variant],
    batches: list[npt.NDArray[np.float32]],
    duration_s: float,
    rounds: int,
    idle_s: float,
    seed: int,
) -> dict[str, Any]:
    """Every target under every load, `rounds` times; medians over rounds, and the median of
    each round's ratio to the first target (the settings before issue #18)."""
    rng = np.random.default_rng(seed)
    measured: dict[str, dict[str, list[dict[str, Any]]]] = {}
    composing = {label: model.removesuffix("_onnx") + "_onnx" for label, model in targets(chosen)}
    async with grpc.aio.insecure_channel(url) as channel:
        for _label, model in targets(chosen):  # warm every target up
            caller = _Caller(channel, model)
            for rows in batches:
                await caller(rows)
        cpu_before = tree_cpu_seconds(pid)
        await asyncio.sleep(idle_s)
        idle_cpu_share = (tree_cpu_seconds(pid) - cpu_before) / idle_s
        print(f"idle tritonserver: {100 * idle_cpu_share:.2f}% of a core", flush=True)
        for round_index in range(rounds):
            order = targets(chosen)
            shift = round_index % len(order)
            order = order[shift:] + order[:shift]  # no target always runs first (or last)
            for load in LOADS:
                for label, model in order:
                    result = await _phase(
                        url, channel, pid, model, composing[label], load, batches, duration_s, rng
                    )
                    measured.setdefault(label, {}).setdefault(load, []).append(result)
                    print(
                        f"round {round_index + 1} {load} {label}: "
                        f"{result['triton_cpu_ms_per_request']:.3f} ms CPU/request, "
                        f"{result['rps']:.0f} req/s, p50 {result['median_ms']:.2f} ms, "
                        f"p99 {result['p99_ms']:.2f} ms, "
                        f"{result['requests_per_execution']:.2f} requests/execution",
                        flush=True,
                    )
    baseline = targets(chosen)[0][0]
    results: dict[str, Any] = {}
    for label, loads in measured.items():
        results[label] = {}
        for load, per_round in loads.items():
            summary = _median_of(per_round)
            # The same round's baseline ran within seconds of this target, under the same
            # background load: the ratio cancels most of the drift between rounds.
            ratios = [
                r["triton_cpu_ms_per_request"] / b["triton_cpu_ms_per_request"]
                for r, b in zip(per_round, measured[baseline][load], strict=True)
            ]
            summary["cpu_ratio_to_baseline"] = statistics.median(ratios)
            summary["cpu_ratios_to_baseline"] = ratios
            results[label][load] = summary
    return {"idle_cpu_share": idle_cpu_share, "baseline": baseline, "results": results}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Writes the variants' repository, starts the server, measures, stops it."""
    machine = machine_description()
    source = args.repository / f"{args.model}_onnx"
    version = max(int(p.name) for p in source.iterdir() if p.is_dir() and p.name.isdigit())
    onnx_path = source / str(version) / repo.ONNX_FILENAME
    metadata = repo.read_version_metadata(source, version)
    features = RankingSet.load(args.dataset).features
    width = int(features.shape[1])
    rng = np.random.default_rng(args.seed)
    sizes = rng.integers(args.min_rows, args.max_rows + 1, size=args.distinct_batches)
    starts = rng.integers(0, len(features) - args.max_rows, size=args.distinct_batches)
    batches = [
        np.ascontiguousarray(features[s : s + n], dtype=np.float32)
        for s, n in zip(starts, sizes, strict=True)
    ]
    chosen = variants(ServingOptions())
    with tempfile.TemporaryDirectory(prefix="triton_serving_bench_") as tmp:
        root = Path(tmp) / "repository"
        for variant in chosen:
            write_ranker(
                root, variant.name, onnx_path, width, metadata, variant.options, repo.Flavour.LOCAL
            )
        options = TritonServerOptions(
            model_repository=root, model_control_mode="explicit", load_models=("*",)
        ).with_free_ports()
        started = time.perf_counter()
        with TritonServer(
            options, log_path=Path(tmp) / "tritonserver.log", startup_timeout_s=300
        ) as server:
            assert server.pid is not None
            print(f"tritonserver ready in {time.perf_counter() - started:.1f} s", flush=True)
            measured = uvloop.run(
                measure(
                    server.grpc_url,
                    server.pid,
                    chosen,
                    batches,
                    args.duration,
                    args.rounds,
                    args.idle,
                    args.seed,
                )
            )
    return {
        "benchmark": "tritonserver CPU per ranking request under each serving choice",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            **machine,
            "note": "shared 2-core development machine (other engineers' builds and tests ran "
            "beside it); the client, tritonserver and its Python-backend stubs share the "
            "cores, so compare targets within this run (they alternate in every round)",
        },
        "versions": {
            "python": sys.version.split()[0],
            "nvidia_pytriton": package_version("nvidia-pytriton"),
            "onnxruntime": package_version("onnxruntime"),
            "grpcio": package_version("grpcio"),
        },
        "settings": {
            "model": f"{source}/{version}/model.onnx",
            "rows_per_request": f"{args.min_rows}-{args.max_rows} (uniform)",
            "features": width,
            "row_source": f"real rows of {args.dataset}, {args.distinct_batches} blocks",
            "client": "grpc.aio under uvloop, one channel, the gateway's InferRequestEncoder",
            "loads": {
                "open450": "open loop, Poisson arrivals, 450 requests/s",
                "open1000": "open loop, Poisson arrivals, 1,000 requests/s",
                "closed32": "closed loop, 32 callers",
            },
            "phase_s": args.duration,
            "rounds": args.rounds,
            "variants": {
                v.name: {
                    "preferred_batch_sizes": list(v.options.preferred_batch_sizes),
                    "max_queue_delay_us": v.options.max_queue_delay_us,
                    "instance_count": v.options.instance_count,
                    "intra_op_threads": v.options.intra_op_threads,
                }
                for v in chosen
            },
        },
        **measured,
    }


def markdown(report: dict[str, Any]) -> str:
    """A short human summary."""
    s, m = report["settings"], report["machine"]
    lines = [
        f"# Triton CPU per ranking request by serving choice ({report['created']})",
        "",
        f"{s['rows_per_request']} real rows x {s['features']} features per request; "
        f"{s['client']}; {s['rounds']} rounds of {s['phase_s']:.0f} s per target and load, "
        f"targets in turn, medians over rounds. tritonserver idle: "
        f"{100 * report['idle_cpu_share']:.2f}% of a core. Machine: {m['cpu_count']} x "
        f"{m['cpu_model']}, load at start {m['load_average_at_start']} ({m['note']}).",
        "",
        f"Ratio: the target's Triton CPU per request over `{report['baseline']}`'s in the same "
        "round and load (median over rounds).",
        "",
        "| target | load | Triton CPU ms/request | ratio | req/s | p50 ms | p99 ms | "
        "requests/execution |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, loads in report["results"].items():
        for load, r in loads.items():
            lines.append(
                f"| {label} | {load} | {r['triton_cpu_ms_per_request']:.3f} | "
                f"{r['cpu_ratio_to_baseline']:.2f} | {r['rps']:.0f} | "
                f"{r['median_ms']:.2f} | {r['p99_ms']:.2f} | {r['requests_per_execution']:.2f} |"
            )
    lines += ["", "Variants:", ""]
    for name, v in s["variants"].items():
        lines.append(
            f"- `{name}`: preferred {v['preferred_batch_sizes'] or 'none'}, max queue delay "
            f"{v['max_queue_delay_us']} us, {v['instance_count']} instance(s), "
            f"{v['intra_op_threads']} intra-op thread(s)"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add_triton_bench_arguments(parser, "triton_serving_bench.json")
    parser.add_argument("--model", default="ranker_v2")
    parser.add_argument("--min-rows", type=int, default=500)
    parser.add_argument("--max-rows", type=int, default=600)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle measurement")
    args = parser.parse_args(argv)
    report = run(args)
    write_json_and_markdown(args.out, report, markdown(report))


if __name__ == "__main__":
    main()
