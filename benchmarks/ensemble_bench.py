"""The Triton ensemble against its single composing model (issue #3, step 9).

``ranker_v2`` is an ensemble of one step, ``ranker_v2_onnx`` (see
triton_models/ranker_repositories.py);
clients call the ensemble so that steps can change without client changes. This measures what
that indirection costs: the real ``tritonserver`` of the nvidia-pytriton wheel is started on
``build/triton/local`` (free ports, explicit model control, only the two models loaded), and
``tritonclient.grpc.aio`` on one channel (like the gateway) sends requests of 500 real feature
rows (consecutive rows of ``build/datasets/test.npz``, several different slices in turn) to
each model, closed loop, at concurrency 1 and 8.

Models are measured in alternating rounds (ensemble, single, ensemble, ...) so that drifting
load on the shared machine hits both alike; the samples of all rounds are pooled. Reported per
model and concurrency: median/p99 latency, throughput, and Triton's own counters of the
composing model over the phase (requests merged per execution, queue and compute time), and
the ensemble's overhead as ratios to the single model.

Run: ``.venv/bin/python -m benchmarks.ensemble_bench [--requests 1000] [--rounds 3]``; writes
``benchmarks/results/ensemble_bench.json`` and ``ensemble_bench.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.harness.loops import closed_loop
from benchmarks.harness.report import (
    add_triton_bench_arguments,
    machine_description,
    package_version,
    write_json_and_markdown,
)
from benchmarks.harness.stats import latency_summary
from benchmarks.harness.triton_driver import BatchStats, parse_statistics
from infra.local.tritonserver import TritonServer, TritonServerOptions
from triton_models import repository as repo
from triton_models.dataset import RankingSet

INPUT_NAME = "features"
OUTPUT_NAME = "score"


def request_batches(
    features: npt.NDArray[np.float32], rows: int, count: int, seed: int = 0
) -> list[npt.NDArray[np.float32]]:
    """``count`` blocks of ``rows`` consecutive real rows starting at random offsets.

    Consecutive rows keep one request's candidates looking like a real request's; a few
    different blocks keep every request from being byte-identical.
    """
    if rows > len(features):
        raise ValueError(f"{rows} rows requested from {len(features)}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(features) - rows + 1, size=count)
    return [np.ascontiguousarray(features[s : s + rows], dtype=np.float32) for s in starts]


def overhead(ensemble: dict[str, Any], single: dict[str, Any]) -> dict[str, float]:
    """The ensemble's cost relative to the single model (ratios > 1 mean slower)."""
    return {
        "median_ratio": ensemble["median_ms"] / single["median_ms"],
        "p99_ratio": ensemble["p99_ms"] / single["p99_ms"],
        "median_added_ms": ensemble["median_ms"] - single["median_ms"],
        "p99_added_ms": ensemble["p99_ms"] - single["p99_ms"],
        "throughput_ratio": ensemble["throughput_rps"] / single["throughput_rps"],
    }


async def _stats(client: Any, model: str) -> BatchStats:
    return parse_statistics(await client.get_inference_statistics(model, as_json=True), model)


async def _phase(
    client: Any, grpcclient: Any, model: str, inputs: list[Any], concurrency: int, requests: int
) -> tuple[list[float], float]:
    """``requests`` calls by ``concurrency`` workers; per-call seconds and wall seconds."""
    outputs = [grpcclient.InferRequestedOutput(OUTPUT_NAME)]

    async def infer(infer_input: Any) -> object:
        return await client.infer(model, [infer_input], outputs=outputs, client_timeout=10.0)

    result = await closed_loop(infer, inputs, concurrency, calls=requests)
    return result.latencies_s, result.wall_s


async def measure(
    url: str,
    models: Sequence[str],
    composing: str,
    batches: list[npt.NDArray[np.float32]],
    concurrencies: Sequence[int],
    requests: int,
    rounds: int,
    warmup: int,
) -> dict[str, Any]:
    """All phases against a running server; returns results per concurrency and model."""
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        metadata = await client.get_server_metadata(as_json=True)
        inputs = []
        for batch in batches:
            infer_input = grpcclient.InferInput(INPUT_NAME, list(batch.shape), "FP32")
            infer_input.set_data_from_numpy(batch)
            inputs.append(infer_input)
        outputs = [grpcclient.InferRequestedOutput(OUTPUT_NAME)]
        scores = [
            (await client.infer(m, [inputs[0]], outputs=outputs)).as_numpy(OUTPUT_NAME)
            for m in models
        ]
        if scores[0].shape != (len(batches[0]), 1) or not np.allclose(scores[0], scores[1]):
            raise RuntimeError(f"{models} disagree or return the wrong shape: {scores[0].shape}")
        for model in models:
            await _phase(client, grpcclient, model, inputs, 1, warmup)
        results: dict[str, Any] = {}
        for concurrency in concurrencies:
            samples: dict[str, list[float]] = {m: [] for m in models}
            wall: dict[str, float] = dict.fromkeys(models, 0.0)
            server = {m: BatchStats(0, 0, 0, 0, 0) for m in models}
            for _ in range(rounds):
                for model in models:
                    before = await _stats(client, composing)
                    got, seconds = await _phase(
                        client, grpcclient, model, inputs, concurrency, requests
                    )
                    after = await _stats(client, composing)
                    samples[model] += got
                    wall[model] += seconds
                    diff = after.minus(before)
                    s = server[model]
                    server[model] = BatchStats(
                        s.inference_count + diff.inference_count,
                        s.execution_count + diff.execution_count,
                        s.success_count + diff.success_count,
                        s.queue_ns + diff.queue_ns,
                        s.compute_infer_ns + diff.compute_infer_ns,
                    )
            per_model = {}
            for model in models:
                summary = latency_summary(samples[model])
                stats = server[model]
                per_model[model] = {
                    **summary,
                    "throughput_rps": len(samples[model]) / wall[model],
                    "rows_per_s": len(samples[model]) * len(batches[0]) / wall[model],
                    "wall_s": wall[model],
                    f"server_{composing}": {
                        "executions": stats.execution_count,
                        "requests_per_execution": stats.requests_per_execution(len(batches[0])),
                        "mean_queue_ms": stats.mean_queue_ms,
                        "mean_compute_ms_per_execution": stats.mean_compute_ms,
                    },
                }
            results[str(concurrency)] = per_model
            print(
                f"concurrency {concurrency}: "
                + "; ".join(
                    f"{m} median {r['median_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms "
                    f"{r['throughput_rps']:.0f} req/s"
                    for m, r in per_model.items()
                )
            )
    finally:
        await client.close()
    return {"server_metadata": metadata, "results": results, "outputs_identical": True}


def serving_description(model_dir: Path) -> str:
    """Instances and batching of the composing model, read from its config.pbtxt."""
    config = repo.read_config(model_dir)
    threads = config.parameters[repo.INTRA_OP_THREADS_PARAMETER].string_value or "1"
    batching = config.dynamic_batching
    preferred = "/".join(str(size) for size in batching.preferred_batch_size) or "none"
    return (
        f"backend {config.backend}; {sum(group.count for group in config.instance_group)} "
        f"CPU instance(s), {threads} intra-op thread(s) each, dynamic batching (preferred "
        f"{preferred}, max queue delay {batching.max_queue_delay_microseconds} us)"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Starts the server, measures, stops it; returns the report."""
    machine = machine_description()
    test = RankingSet.load(args.dataset)
    batches = request_batches(test.features, args.rows, args.distinct_batches, seed=args.seed)
    models = [args.ensemble, args.single]
    options = TritonServerOptions(
        model_repository=args.repository,
        model_control_mode="explicit",
        load_models=tuple(models),
    ).with_free_ports()
    with tempfile.TemporaryDirectory(prefix="ensemble_bench_") as tmp:
        server = TritonServer(options, log_path=Path(tmp) / "tritonserver.log")
        start = time.perf_counter()
        with server:
            startup_s = time.perf_counter() - start
            print(f"tritonserver ready in {startup_s:.1f} s at {server.grpc_url}")
            measured = asyncio.run(
                measure(
                    server.grpc_url,
                    models,
                    args.single,
                    batches,
                    args.concurrency,
                    args.requests,
                    args.rounds,
                    args.warmup,
                )
            )
    results = measured["results"]
    overheads = {
        c: overhead(per_model[args.ensemble], per_model[args.single])
        for c, per_model in results.items()
    }
    config = (args.repository / args.single / "config.pbtxt").read_text()
    return {
        "benchmark": "Triton ensemble vs its single composing model, gRPC, 500-row requests",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            **machine,
            "note": "shared 2-core development machine (CI and other engineers); the client, "
            "tritonserver and its Python-backend stubs all share these cores, so absolute "
            "figures are pessimistic and noisy; the ratio is the figure to read",
        },
        "versions": {
            "python": sys.version.split()[0],
            "tritonserver": measured["server_metadata"].get("version"),
            "tritonclient": package_version("tritonclient"),
            "nvidia_pytriton": package_version("nvidia-pytriton"),
            "onnxruntime": package_version("onnxruntime"),
            "grpcio": package_version("grpcio"),
            "numpy": np.__version__,
        },
        "settings": {
            "repository": str(args.repository),
            "ensemble": args.ensemble,
            "single": args.single,
            "serving": serving_description(args.repository / args.single),
            "model_control_mode": "explicit",
            "rows_per_request": args.rows,
            "features": int(batches[0].shape[1]),
            "row_source": f"real rows of {args.dataset}, {args.distinct_batches} blocks of "
            f"{args.rows} consecutive rows, used in turn",
            "client": "tritonclient.grpc.aio, one channel, closed loop, one Python thread",
            "concurrency": list(args.concurrency),
            "requests_per_round": args.requests,
            "rounds": args.rounds,
            "order": "alternating rounds ensemble/single, samples pooled",
            "warmup_requests": args.warmup,
            "server_startup_s": startup_s,
            "composing_model_config": config,
        },
        "results": results,
        "ensemble_overhead": overheads,
        "check": "before timing, both models scored the same request; scores equal (allclose)",
    }


def markdown(report: dict[str, Any]) -> str:
    """A short human summary."""
    s = report["settings"]
    m = report["machine"]
    lines = [
        f"# Triton ensemble `{s['ensemble']}` vs `{s['single']}` ({report['created']})",
        "",
        f"{s['rows_per_request']} real rows x {s['features']} features per request, "
        f"{s['client']}; {s['rounds']} alternating rounds of {s['requests_per_round']} requests "
        f"per model and concurrency. {s['serving']}. tritonserver "
        f"{report['versions']['tritonserver']}.",
        "",
        f"Machine: {m['cpu_count']} x {m['cpu_model']}, load at start "
        f"{m['load_average_at_start']} — {m['note']}.",
        "",
        "| concurrency | model | median ms | p99 ms | req/s | requests/execution |",
        "|---|---|---|---|---|---|",
    ]
    for c, per_model in report["results"].items():
        for model, r in per_model.items():
            server = r[f"server_{s['single']}"]
            lines.append(
                f"| {c} | {model} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['throughput_rps']:.0f} | {server['requests_per_execution']:.2f} |"
            )
    lines += ["", "Ensemble overhead (ensemble / single):", ""]
    lines += ["| concurrency | median ratio | p99 ratio | median +ms | throughput ratio |"]
    lines += ["|---|---|---|---|---|"]
    for c, o in report["ensemble_overhead"].items():
        lines.append(
            f"| {c} | {o['median_ratio']:.3f} | {o['p99_ratio']:.3f} | "
            f"{o['median_added_ms']:+.3f} | {o['throughput_ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add_triton_bench_arguments(parser, "ensemble_bench.json")
    parser.add_argument("--ensemble", default="ranker_v2")
    parser.add_argument("--single", default="ranker_v2_onnx")
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=1000, help="per model, round, concurrency")
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args(argv)
    report = run(args)
    write_json_and_markdown(args.out, report, markdown(report))


if __name__ == "__main__":
    main()
