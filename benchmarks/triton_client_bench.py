"""Client CPU per Triton call: tritonclient's objects against the gateway's encoded stub call.

Three ways to send the gateway's ranking request (FP32 ``[rows, F]`` real feature rows, ``score``
back) are measured side by side in one process, against the real ``tritonserver`` of the
nvidia-pytriton wheel serving ``build/triton/local``:

- ``tritonclient``: what ``TritonRanker`` did before issue #18: ``InferInput`` +
  ``set_data_from_numpy`` + ``tritonclient.grpc.aio.InferenceServerClient.infer``, then
  ``InferResult.as_numpy`` and ``get_response().model_version``;
- ``stub_message``: the generated ``GRPCInferenceService`` stub that tritonclient ships, a
  ``ModelInferRequest`` message built per call with ``raw_input_contents=[rows.tobytes()]``
  and the reply read with ``np.frombuffer``;
- ``ranker``: ``gateway.stages.rank.TritonRanker.score`` as the gateway calls it (request
  pre-serialized by ``InferRequestEncoder``, circuit breaker, timeout and shield included).

Two figures per way, each in alternating rounds (so drifting load on a shared machine hits all
alike), the median of the rounds reported:

- ``offline_us``: CPU microseconds to build and serialize one request and read one reply,
  without the network (a reply Triton really sent, parsed again each time);
- ``closed_loop``: a closed loop of ``concurrency`` callers on one channel under uvloop (as
  the gateway runs); the client process's CPU (``time.process_time``, all its threads,
  gRPC's included) and tritonserver's (its process tree, from /proc) per call.

Run: ``.venv/bin/python -m benchmarks.triton_client_bench``; writes
``benchmarks/results/triton_client_bench.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import uvloop

from benchmarks.harness.loops import closed_loop
from benchmarks.harness.procs import tree_cpu_seconds
from benchmarks.harness.report import (
    add_triton_bench_arguments,
    machine_description,
    package_version,
    write_json_and_markdown,
)
from gateway.stages.rank import InferRequestEncoder, TritonRanker, read_scores
from infra.local.tritonserver import TritonServer, TritonServerOptions
from triton_models.dataset import RankingSet

INPUT_NAME = "features"
OUTPUT_NAME = "score"
WAYS = ("tritonclient", "stub_message", "ranker")


class _Way(Protocol):
    async def score(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...

    async def close(self) -> None: ...


class TritonclientWay:
    """The ranker's former per-call code: tritonclient's aio client and its objects."""

    def __init__(self, url: str, model: str) -> None:
        import tritonclient.grpc.aio as grpcclient
        from opentelemetry import propagate

        self._grpcclient = grpcclient
        self._propagate = propagate
        self._client = grpcclient.InferenceServerClient(url)
        self._model = model

    async def score(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        grpcclient = self._grpcclient
        request = grpcclient.InferInput(INPUT_NAME, list(rows.shape), "FP32")
        request.set_data_from_numpy(rows)
        headers: dict[str, str] = {}
        self._propagate.inject(headers)
        call = asyncio.ensure_future(
            self._client.infer(
                self._model,
                [request],
                model_version="",
                outputs=[grpcclient.InferRequestedOutput(OUTPUT_NAME)],
                client_timeout=30.0,
                headers=headers,
            )
        )
        async with asyncio.timeout(5.0):
            result = await asyncio.shield(call)
        scores = result.as_numpy(OUTPUT_NAME)
        _ = result.get_response().model_version
        return np.asarray(scores.reshape(-1).astype(np.float32, copy=False))

    async def close(self) -> None:
        await self._client.close()


class StubMessageWay:
    """The generated stub, a ModelInferRequest message per call."""

    def __init__(self, url: str, model: str) -> None:
        import grpc
        from opentelemetry import propagate
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self._pb = service_pb2
        self._propagate = propagate
        self._channel = grpc.aio.insecure_channel(url)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._model = model
        self._outputs = [service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=OUTPUT_NAME)]

    async def score(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        pb = self._pb
        request = pb.ModelInferRequest(
            model_name=self._model,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name=INPUT_NAME, datatype="FP32", shape=rows.shape
                )
            ],
            outputs=self._outputs,
            raw_input_contents=[rows.tobytes()],
        )
        headers: dict[str, str] = {}
        self._propagate.inject(headers)
        call = asyncio.ensure_future(
            self._stub.ModelInfer(
                request, timeout=30.0, metadata=tuple(headers.items()) if headers else None
            )
        )
        async with asyncio.timeout(5.0):
            reply = await asyncio.shield(call)
        scores = read_scores(reply, rows.shape[0])
        if scores is None:
            raise RuntimeError("misshapen reply")
        return scores

    async def close(self) -> None:
        await self._channel.close()


class RankerWay:
    """The gateway's TritonRanker."""

    def __init__(self, url: str, model: str) -> None:
        self._ranker = TritonRanker(url)
        self._model = model

    async def score(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return (await self._ranker.score(self._model, 0, rows, 5.0)).scores

    async def close(self) -> None:
        await self._ranker.close()


def _make_way(name: str, url: str, model: str) -> _Way:
    ways: dict[str, Callable[[str, str], _Way]] = {
        "tritonclient": TritonclientWay,
        "stub_message": StubMessageWay,
        "ranker": RankerWay,
    }
    return ways[name](url, model)


def offline_work(model: str, rows: npt.NDArray[np.float32], reply_bytes: bytes) -> dict[str, Any]:
    """Per way, a function doing one call's request building, serialization and reply reading
    (no network), as each way does it."""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.grpc import InferResult, service_pb2
    from tritonclient.grpc._utils import _get_inference_request

    def tritonclient_way() -> None:
        request = grpcclient.InferInput(INPUT_NAME, list(rows.shape), "FP32")
        request.set_data_from_numpy(rows)
        message = _get_inference_request(  # what InferenceServerClient.infer builds
            model_name=model,
            inputs=[request],
            model_version="",
            request_id="",
            outputs=[grpcclient.InferRequestedOutput(OUTPUT_NAME)],
            sequence_id=0,
            sequence_start=False,
            sequence_end=False,
            priority=0,
            timeout=None,
            parameters=None,
        )
        message.SerializeToString()
        result = InferResult(service_pb2.ModelInferResponse.FromString(reply_bytes))
        result.as_numpy(OUTPUT_NAME).reshape(-1).astype(np.float32, copy=False)
        _ = result.get_response().model_version

    outputs = [service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=OUTPUT_NAME)]

    def stub_message_way() -> None:
        service_pb2.ModelInferRequest(
            model_name=model,
            inputs=[
                service_pb2.ModelInferRequest.InferInputTensor(
                    name=INPUT_NAME, datatype="FP32", shape=rows.shape
                )
            ],
            outputs=outputs,
            raw_input_contents=[rows.tobytes()],
        ).SerializeToString()
        read_scores(service_pb2.ModelInferResponse.FromString(reply_bytes), rows.shape[0])

    encoder = InferRequestEncoder(model, 0)

    def ranker_way() -> None:
        encoder.encode(rows)
        read_scores(service_pb2.ModelInferResponse.FromString(reply_bytes), rows.shape[0])

    return {
        "tritonclient": tritonclient_way,
        "stub_message": stub_message_way,
        "ranker": ranker_way,
    }


def measure_offline(work: dict[str, Any], calls: int, rounds: int) -> dict[str, Any]:
    """CPU microseconds per call of each way's offline work, alternating rounds."""
    per_round: dict[str, list[float]] = {name: [] for name in WAYS}
    for name in WAYS:
        for _ in range(200):
            work[name]()
    for _ in range(rounds):
        for name in WAYS:
            started = time.process_time()
            for _ in range(calls):
                work[name]()
            per_round[name].append((time.process_time() - started) / calls * 1e6)
    return {
        name: {"median_us": statistics.median(values), "rounds_us": values}
        for name, values in per_round.items()
    }


async def _closed_loop(
    way: _Way, batches: list[npt.NDArray[np.float32]], concurrency: int, calls: int
) -> float:
    return (await closed_loop(way.score, batches, concurrency, calls=calls)).wall_s


async def measure_online(
    url: str,
    model: str,
    server_pid: int,
    batches: list[npt.NDArray[np.float32]],
    concurrencies: Sequence[int],
    calls: int,
    rounds: int,
) -> dict[str, Any]:
    """Closed-loop client and server CPU per call of each way, alternating rounds."""
    ways = {name: _make_way(name, url, model) for name in WAYS}
    try:
        reference = await ways["tritonclient"].score(batches[0])
        for name, way in ways.items():
            got = await way.score(batches[0])
            if not np.allclose(got, reference.reshape(-1)):
                raise RuntimeError(f"{name} scores differ from tritonclient's")
            await _closed_loop(way, batches, 4, 200)  # warm up
        results: dict[str, Any] = {}
        for concurrency in concurrencies:
            rows: dict[str, dict[str, list[float]]] = {
                name: {"client_cpu_ms": [], "server_cpu_ms": [], "rps": []} for name in WAYS
            }
            for _ in range(rounds):
                for name, way in ways.items():
                    client_before = time.process_time()
                    server_before = tree_cpu_seconds(server_pid)
                    wall = await _closed_loop(way, batches, concurrency, calls)
                    server_cpu = tree_cpu_seconds(server_pid) - server_before
                    client_cpu = time.process_time() - client_before
                    rows[name]["client_cpu_ms"].append(client_cpu / calls * 1e3)
                    rows[name]["server_cpu_ms"].append(server_cpu / calls * 1e3)
                    rows[name]["rps"].append(calls / wall)
            results[str(concurrency)] = {
                name: {
                    **{f"median_{k}": statistics.median(v) for k, v in figures.items()},
                    "rounds": figures,
                }
                for name, figures in rows.items()
            }
            print(
                f"concurrency {concurrency}: "
                + "; ".join(
                    f"{n} client {r['median_client_cpu_ms']:.3f} ms/call, "
                    f"triton {r['median_server_cpu_ms']:.3f} ms/call"
                    for n, r in results[str(concurrency)].items()
                ),
                flush=True,
            )
        return results
    finally:
        for way in ways.values():
            await way.close()


async def _reply_bytes(url: str, model: str, rows: npt.NDArray[np.float32]) -> bytes:
    import grpc
    from tritonclient.grpc import service_pb2

    async with grpc.aio.insecure_channel(url) as channel:
        infer: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=None,
            response_deserializer=None,
        )
        reply: bytes = await infer(InferRequestEncoder(model, 0).encode(rows), timeout=10.0)
    service_pb2.ModelInferResponse.FromString(reply)  # it is a reply
    return reply


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Starts the server, measures, stops it; returns the report."""
    machine = machine_description()
    features = RankingSet.load(args.dataset).features
    rng = np.random.default_rng(args.seed)
    sizes = rng.integers(args.min_rows, args.max_rows + 1, size=args.distinct_batches)
    starts = rng.integers(0, len(features) - args.max_rows, size=args.distinct_batches)
    batches = [
        np.ascontiguousarray(features[s : s + n], dtype=np.float32)
        for s, n in zip(starts, sizes, strict=True)
    ]
    options = TritonServerOptions(
        model_repository=args.repository,
        model_control_mode="explicit",
        load_models=(args.model, f"{args.model}_onnx"),
    ).with_free_ports()
    with (
        tempfile.TemporaryDirectory(prefix="triton_client_bench_") as tmp,
        TritonServer(options, log_path=Path(tmp) / "tritonserver.log") as server,
    ):
        assert server.pid is not None
        reply = asyncio.run(_reply_bytes(server.grpc_url, args.model, batches[0]))
        offline = measure_offline(
            offline_work(args.model, batches[0], reply), args.offline_calls, args.rounds
        )
        print(
            "offline: "
            + "; ".join(f"{n} {r['median_us']:.1f} us/call" for n, r in offline.items()),
            flush=True,
        )
        online = uvloop.run(
            measure_online(
                server.grpc_url,
                args.model,
                server.pid,
                batches,
                args.concurrency,
                args.calls,
                args.rounds,
            )
        )
    return {
        "benchmark": "client CPU per Triton call: tritonclient objects vs the encoded stub call",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            **machine,
            "note": "shared 2-core development machine; the client, tritonserver and its "
            "Python-backend stubs share the cores with other work, so compare the ways "
            "within this run (alternating rounds), not with other runs",
        },
        "versions": {
            "python": sys.version.split()[0],
            "tritonclient": package_version("tritonclient"),
            "grpcio": package_version("grpcio"),
            "protobuf": package_version("protobuf"),
            "numpy": np.__version__,
        },
        "settings": {
            "repository": str(args.repository),
            "model": args.model,
            "rows_per_request": f"{args.min_rows}-{args.max_rows} (uniform)",
            "features": int(batches[0].shape[1]),
            "row_source": f"real rows of {args.dataset}, {args.distinct_batches} blocks",
            "event_loop": "uvloop, one channel per way, closed loop",
            "concurrency": list(args.concurrency),
            "calls_per_round": args.calls,
            "offline_calls_per_round": args.offline_calls,
            "rounds": args.rounds,
        },
        "offline_us": offline,
        "closed_loop": online,
    }


def markdown(report: dict[str, Any]) -> str:
    """A short human summary."""
    s, m = report["settings"], report["machine"]
    lines = [
        f"# Client CPU per Triton call ({report['created']})",
        "",
        f"`{s['model']}`, {s['rows_per_request']} real rows x {s['features']} features per "
        f"request; {s['rounds']} alternating rounds, medians. Machine: {m['cpu_count']} x "
        f"{m['cpu_model']}, load at start {m['load_average_at_start']} ({m['note']}).",
        "",
        "Request building, serialization and reply reading, no network (CPU us per call):",
        "",
        "| way | median us | rounds |",
        "|---|---|---|",
    ]
    for name, r in report["offline_us"].items():
        rounds = ", ".join(f"{v:.1f}" for v in r["rounds_us"])
        lines.append(f"| {name} | {r['median_us']:.1f} | {rounds} |")
    lines += [
        "",
        "Closed loop against tritonserver (client process CPU incl. gRPC threads; Triton tree):",
        "",
        "| concurrency | way | client CPU ms/call | Triton CPU ms/call | req/s |",
        "|---|---|---|---|---|",
    ]
    for concurrency, ways in report["closed_loop"].items():
        for name, r in ways.items():
            lines.append(
                f"| {concurrency} | {name} | {r['median_client_cpu_ms']:.3f} | "
                f"{r['median_server_cpu_ms']:.3f} | {r['median_rps']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add_triton_bench_arguments(parser, "triton_client_bench.json")
    parser.add_argument("--model", default="ranker_v2")
    parser.add_argument("--min-rows", type=int, default=500)
    parser.add_argument("--max-rows", type=int, default=600)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--calls", type=int, default=1000, help="per way, round, concurrency")
    parser.add_argument("--offline-calls", type=int, default=5000)
    args = parser.parse_args(argv)
    report = run(args)
    write_json_and_markdown(args.out, report, markdown(report))


if __name__ == "__main__":
    main()
