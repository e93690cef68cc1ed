"""CPU per Triton call by transport: gRPC `ModelInfer` against HTTP/1.1 with binary tensors.

Both go through the gateway's own `TritonRanker` (its call batching, breaker and encoders),
to the served `ranker_v2` of `build/triton/local` (both heads), with 550 real feature rows
per request from the test set. One tritonserver serves both; the transports alternate phase
by phase (the order flipped every round), so machine load hits both alike. Per phase: CPU
per call of this process (the client: the gateway's side, with the load driver's own small
share, the same for both), of tritonserver and of its Python-backend stubs, read from /proc;
latency median. Figures are medians over rounds.

Loads: open loop at `--rates` (Poisson arrivals, how the gateway calls Triton: a few calls
in flight) and a closed loop of 8 callers.

    python -m benchmarks.triton_transport [--rounds 4] [--seconds 5] [--rates 450 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import uvloop

from benchmarks.harness.loops import LoopResult, closed_loop, open_loop
from benchmarks.harness.procs import cpu_seconds, descendants, tree_cpu_seconds
from benchmarks.harness.report import RESULTS_DIR, machine_description, write_json_and_markdown
from gateway.stages.rank import RankerFailure, TritonRanker
from infra.local.tritonserver import TritonServer, TritonServerOptions
from triton_models.dataset import RankingSet

ROWS = 550
MODEL = "ranker_v2"
TRANSPORTS = ("grpc", "http")


def _cpu_s(pid: int) -> float:
    return cpu_seconds(pid) or 0.0


async def _load(
    ranker: TritonRanker,
    batches: list[npt.NDArray[np.float32]],
    load: str,
    seconds: float,
    rng: np.random.Generator,
) -> LoopResult:
    async def score(rows: npt.NDArray[np.float32]) -> None:
        await ranker.score(MODEL, 0, rows, 5.0, discovery=True)

    errors = (RankerFailure,)
    if load.startswith("open"):
        return await open_loop(score, batches, float(load[4:]), seconds, rng, errors=errors)
    return await closed_loop(score, batches, int(load[6:]), duration_s=seconds, errors=errors)


async def _measure(
    server: TritonServer,
    batches: list[npt.NDArray[np.float32]],
    loads: Sequence[str],
    rounds: int,
    seconds: float,
) -> dict[str, Any]:
    assert server.pid is not None
    rankers = {
        "grpc": TritonRanker(server.grpc_url),
        "http": TritonRanker(server.grpc_url, http_url=server.http_url),
    }
    processes = len(descendants(server.pid))
    rng = np.random.default_rng(0)
    phases: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for ranker in rankers.values():  # warm both up
            for rows in batches:
                await ranker.score(MODEL, 0, rows, 5.0, discovery=True)
        for round_index in range(rounds):
            order = TRANSPORTS if round_index % 2 == 0 else TRANSPORTS[::-1]
            for load in loads:
                for transport in order:
                    own, server_cpu = _cpu_s(os.getpid()), _cpu_s(server.pid)
                    tree = tree_cpu_seconds(server.pid)
                    result = await _load(rankers[transport], batches, load, seconds, rng)
                    latencies = result.latencies_s
                    calls = max(len(latencies), 1)
                    triton = tree_cpu_seconds(server.pid) - tree
                    tritonserver = _cpu_s(server.pid) - server_cpu
                    phase = {
                        "client_cpu_ms_per_call": 1000 * (_cpu_s(os.getpid()) - own) / calls,
                        "tritonserver_cpu_ms_per_call": 1000 * tritonserver / calls,
                        "stubs_cpu_ms_per_call": 1000 * (triton - tritonserver) / calls,
                        "triton_cpu_ms_per_call": 1000 * triton / calls,
                        "median_ms": 1000 * statistics.median(latencies) if latencies else 0.0,
                        "calls": len(latencies),
                        "failures": result.errors,
                    }
                    phases.setdefault(load, {}).setdefault(transport, []).append(phase)
                    print(
                        f"round {round_index + 1} {load} {transport}: "
                        + ", ".join(f"{k} {v:.3f}" for k, v in phase.items()),
                        flush=True,
                    )
    finally:
        for ranker in rankers.values():
            await ranker.close()
    return {
        "triton_processes": processes,
        "loads": {
            load: {
                transport: {
                    key: statistics.median(p[key] for p in per_round) for key in per_round[0]
                }
                | {"rounds": per_round}
                for transport, per_round in by_transport.items()
            }
            for load, by_transport in phases.items()
        },
    }


def _markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"# Triton calls by transport: gRPC against HTTP/1.1 ({report['created']})",
        "",
        f"Machine: {machine['cpu_count']} CPUs ({machine['cpu_model']}), load average at start "
        f"{machine['load_average_at_start']}; client, tritonserver and its stubs share them. "
        f"`{MODEL}` of `build/triton/local` (both heads), {ROWS} real rows per call, "
        f"`TritonRanker` for both transports, {report['rounds']} rounds of {report['seconds']} s "
        "per load and transport, alternating; medians over rounds.",
        "",
        "| load | transport | client CPU ms/call | tritonserver ms/call | stubs ms/call | "
        "Triton total ms/call | p50 ms | calls | failures |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for load, by_transport in report["loads"].items():
        for transport, m in by_transport.items():
            lines.append(
                f"| {load} | {transport} | {m['client_cpu_ms_per_call']:.3f} | "
                f"{m['tritonserver_cpu_ms_per_call']:.3f} | {m['stubs_cpu_ms_per_call']:.3f} | "
                f"{m['triton_cpu_ms_per_call']:.3f} | {m['median_ms']:.2f} | "
                f"{m['calls']:.0f} | {m['failures']:.0f} |"
            )
        grpc, http = by_transport["grpc"], by_transport["http"]
        lines.append(
            f"| {load} | http / grpc | "
            f"{http['client_cpu_ms_per_call'] / grpc['client_cpu_ms_per_call']:.2f}x | "
            f"{http['tritonserver_cpu_ms_per_call'] / grpc['tritonserver_cpu_ms_per_call']:.2f}x"
            f" | {http['stubs_cpu_ms_per_call'] / grpc['stubs_cpu_ms_per_call']:.2f}x | "
            f"{http['triton_cpu_ms_per_call'] / grpc['triton_cpu_ms_per_call']:.2f}x | | | |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("build/triton/local"))
    parser.add_argument("--dataset", type=Path, default=Path("build/datasets/test.npz"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rates", type=int, nargs="+", default=[450, 1000])
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args(argv)
    created = datetime.now(UTC)
    features = RankingSet.load(options.dataset).features
    rng = np.random.default_rng(1)
    batches = [
        np.ascontiguousarray(features[start : start + ROWS], dtype=np.float32)
        for start in rng.integers(0, len(features) - ROWS, size=16)
    ]
    loads = [f"open{rate}" for rate in options.rates] + [f"closed{options.callers}"]
    machine = machine_description()
    server_options = TritonServerOptions(model_repository=options.repository).with_free_ports()
    with tempfile.TemporaryDirectory(prefix="triton-transport-") as tmp:
        log = Path(tmp) / "tritonserver.log"
        with TritonServer(server_options, log_path=log, startup_timeout_s=300) as server:
            measured = uvloop.run(_measure(server, batches, loads, options.rounds, options.seconds))
    report = {
        "benchmark": "CPU per Triton call by transport (TritonRanker: gRPC vs HTTP/1.1)",
        "created": created.isoformat(timespec="seconds"),
        "machine": machine,
        "rounds": options.rounds,
        "seconds": options.seconds,
        **measured,
    }
    out = options.out or RESULTS_DIR / f"triton-transport-{created:%Y%m%dT%H%M%SZ}.json"
    markdown = _markdown(report)
    write_json_and_markdown(out, report, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
