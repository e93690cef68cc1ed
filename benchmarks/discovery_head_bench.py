"""Triton's CPU per request for three ways of serving the discovery model beside a ranker.

From the ONNX models of one build (``build/onnx``: ``ranker_v2``'s and ``discovery_v1``'s
INT8 graphs), three ensembles are written with the pipeline's own writers into one temporary
local repository (Python backend, the build's serving options):

- ``ranker_only``: the ranker alone (the layout before discovery; asked for ``score``);
- ``two_steps``: the ranker and the discovery model as two steps of one ensemble (the first
  discovery layout: Triton runs both on every call; asked for both outputs);
- ``two_heads``: the ranker's graph carrying the discovery model as a second head
  (:mod:`triton_models.two_heads`, the layout ``make models`` writes now; asked for both).

The wheel's ``tritonserver`` serves them at once; each is driven in turn by a closed loop of
real feature rows (``tritonclient.grpc.aio``, one channel), the model order rotating from round
to round, and Triton's CPU time (server and backend stubs, from /proc) is read around each
round. The machine's other load moves every figure, so the ratios within a round are the
figures to read.

    python -m benchmarks.discovery_head_bench [--rounds 6] [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as grpcclient

from benchmarks.ensemble_bench import request_batches
from benchmarks.harness.loops import closed_loop
from benchmarks.harness.procs import cpu_seconds, descendants
from benchmarks.harness.report import (
    add_triton_bench_arguments,
    machine_description,
    write_json_and_markdown,
)
from feature_service.definitions import NUM_FEATURES
from infra.local.tritonserver import TritonServer, TritonServerOptions
from triton_models import repository as repo
from triton_models.dataset import RankingSet
from triton_models.export import INPUT_NAME, OUTPUT_NAME
from triton_models.ranker_repositories import (
    DISCOVERY_OUTPUT,
    DiscoveryHead,
    ServingOptions,
    tensor_specs,
    write_discovery,
    write_ranker,
)

LAYOUTS = ("ranker_only", "two_steps", "two_heads")


def write_layouts(root: Path, onnx_dir: Path, ranker: str, discovery: str) -> None:
    """The three ensembles (named as `LAYOUTS`) and their ONNX models, into `root`."""
    options = ServingOptions()
    flavour = repo.Flavour.LOCAL
    ranker_graph = onnx_dir / ranker / "int8.onnx"
    discovery_graph = onnx_dir / discovery / "int8.onnx"
    write_ranker(root, "ranker_only", ranker_graph, NUM_FEATURES, {}, options, flavour)
    write_discovery(root, discovery, discovery_graph, NUM_FEATURES, {}, options, flavour)
    head = DiscoveryHead(discovery, discovery_graph)
    write_ranker(
        root, "two_heads", ranker_graph, NUM_FEATURES, {}, options, flavour, discovery=head
    )
    features, score = tensor_specs(NUM_FEATURES)
    steps = (
        repo.EnsembleStep("ranker_only_onnx", {INPUT_NAME: INPUT_NAME}, {OUTPUT_NAME: OUTPUT_NAME}),
        repo.EnsembleStep(
            f"{discovery}_onnx", {INPUT_NAME: INPUT_NAME}, {OUTPUT_NAME: DISCOVERY_OUTPUT}
        ),
    )
    repo.write_ensemble(
        root,
        repo.EnsembleSpec(
            name="two_steps",
            inputs=(features,),
            outputs=(score, repo.TensorSpec(DISCOVERY_OUTPUT, np.float32, (1,))),
            steps=steps,
            max_batch_size=options.max_batch_size,
            version_policy=repo.LatestVersions(options.loaded_versions),
        ),
    )


def _outputs(layout: str) -> tuple[str, ...]:
    return (OUTPUT_NAME,) if layout == "ranker_only" else (OUTPUT_NAME, DISCOVERY_OUTPUT)


def _tree_cpu_s(pid: int) -> float:
    return sum(cpu_seconds(p) or 0.0 for p in (pid, *descendants(pid)))


async def _round(
    url: str,
    layout: str,
    batches: Sequence[npt.NDArray[np.float32]],
    concurrency: int,
    requests: int,
    pid: int,
) -> dict[str, float]:
    client = grpcclient.InferenceServerClient(url)
    outputs = [grpcclient.InferRequestedOutput(name) for name in _outputs(layout)]
    inputs = []
    for batch in batches:
        tensor = grpcclient.InferInput(INPUT_NAME, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        inputs.append(tensor)

    async def infer(tensor: Any) -> object:
        return await client.infer(layout, [tensor], outputs=outputs, client_timeout=10.0)

    try:
        before = _tree_cpu_s(pid)
        result = await closed_loop(infer, inputs, concurrency, calls=requests)
        cpu_s = _tree_cpu_s(pid) - before
    finally:
        await client.close()
    return {
        "cpu_ms_per_request": cpu_s * 1000.0 / requests,
        "req_per_s": requests / result.wall_s,
        "median_ms": statistics.median(result.latencies_s) * 1000.0,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Writes the layouts, starts tritonserver on them, measures; returns the report."""
    machine = machine_description()
    test = RankingSet.load(args.dataset)
    batches = request_batches(test.features, args.rows, args.distinct_batches, seed=args.seed)
    rounds: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="discovery_head_bench_") as tmp:
        root = Path(tmp) / "repository"
        write_layouts(root, args.onnx_dir, args.ranker, args.discovery)
        options = TritonServerOptions(
            model_repository=root, model_control_mode="explicit", load_models=LAYOUTS
        ).with_free_ports()
        with TritonServer(options, log_path=Path(tmp) / "tritonserver.log") as server:
            pid = server.pid
            if pid is None:
                raise RuntimeError("tritonserver is not running")
            for concurrency in args.concurrency:
                per_layout: dict[str, list[dict[str, float]]] = {name: [] for name in LAYOUTS}
                for layout in LAYOUTS:  # warm-up, not counted
                    asyncio.run(
                        _round(server.grpc_url, layout, batches, concurrency, args.warmup, pid)
                    )
                for index in range(args.rounds):
                    shift = index % len(LAYOUTS)
                    for layout in (*LAYOUTS[shift:], *LAYOUTS[:shift]):
                        figure = asyncio.run(
                            _round(
                                server.grpc_url, layout, batches, concurrency, args.requests, pid
                            )
                        )
                        per_layout[layout].append(figure)
                rounds[str(concurrency)] = per_layout
                print(f"concurrency {concurrency}: " + summary_line(per_layout), flush=True)
    return {
        "benchmark": "discovery_head_bench",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        "settings": {
            "ranker": args.ranker,
            "discovery": args.discovery,
            "rows": args.rows,
            "requests_per_round": args.requests,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
        },
        "rounds": rounds,
    }


def _median(figures: list[dict[str, float]], key: str) -> float:
    return statistics.median(figure[key] for figure in figures)


def _ratios(per_layout: dict[str, list[dict[str, float]]], layout: str) -> list[float]:
    """Per round, `layout`'s Triton CPU per request over the ranker alone's."""
    return [
        ours["cpu_ms_per_request"] / base["cpu_ms_per_request"]
        for ours, base in zip(per_layout[layout], per_layout["ranker_only"], strict=True)
    ]


def summary_line(per_layout: dict[str, list[dict[str, float]]]) -> str:
    """Median Triton CPU ms per request of each layout, one line."""
    return "; ".join(
        f"{name} {_median(figures, 'cpu_ms_per_request'):.3f} ms"
        for name, figures in per_layout.items()
    )


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page."""
    settings, machine = report["settings"], report["machine"]
    lines = [
        f"# Discovery beside the ranker: Triton CPU per request ({report['time']})",
        "",
        f"{settings['ranker']} and {settings['discovery']} (INT8, this build), "
        f"{settings['rows']} real rows per request, {settings['rounds']} rounds of "
        f"{settings['requests_per_round']} requests per layout and concurrency, model order "
        "rotating; Triton CPU (server and Python-backend stubs) from /proc.",
        "",
        f"Machine: {machine['cpu_count']} x {machine['cpu_model']}, load at start "
        f"{machine['load_average_at_start']} (shared; read the ratios).",
        "",
        "| concurrency | layout | Triton CPU ms/request (median) | / ranker alone, "
        "per-round median | req/s (median) | median ms |",
        "|---|---|---|---|---|---|",
    ]
    for concurrency, per_layout in report["rounds"].items():
        for name, figures in per_layout.items():
            ratio = statistics.median(_ratios(per_layout, name))
            lines.append(
                f"| {concurrency} | {name} | {_median(figures, 'cpu_ms_per_request'):.3f} | "
                f"{ratio:.2f} | {_median(figures, 'req_per_s'):.0f} | "
                f"{_median(figures, 'median_ms'):.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add_triton_bench_arguments(parser, "discovery_head_bench.json")
    parser.add_argument("--onnx-dir", type=Path, default=Path("build/onnx"))
    parser.add_argument("--ranker", default="ranker_v2")
    parser.add_argument("--discovery", default="discovery_v1")
    parser.add_argument("--rows", type=int, default=550)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=400, help="per layout and round")
    parser.add_argument("--warmup", type=int, default=50)
    parser.set_defaults(rounds=6)
    args = parser.parse_args(argv)
    report = run(args)
    write_json_and_markdown(args.out, report, markdown(report))


if __name__ == "__main__":
    main()
