"""A grpc.aio server that answers Recommend with a pre-built response and does nothing else.

It is the ceiling of the gateway's own stack (grpcio's asyncio server on uvloop, protobuf
(de)serialisation, one Python process): whatever the gateway loses against it is spent in our
pipeline. The response is read from `--response-file` (a serialized RecommendResponse captured
from the real gateway, so both answer with the same bytes) or, without one, built with
`num_items` items of typical size. Serves gRPC health so the load scripts can wait for it.

    python -m benchmarks.echo_server --port 50061 [--response-file resp.bin]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from recsys.v1 import recommendation_pb2 as pb
from recsys.v1 import recommendation_pb2_grpc as pb_grpc


def synthetic_response(num_items: int = 10) -> pb.RecommendResponse:
    """A response shaped like the gateway's: `num_items` items with full metadata."""
    return pb.RecommendResponse(
        recommendations=[
            pb.Recommendation(
                item_id=f"{85000 + i}A",
                score=1.0 - i / max(1, num_items),
                metadata=pb.ItemMetadata(
                    title=f"WHITE HANGING HEART T-LIGHT HOLDER {i}",
                    price=2.55,
                    currency="GBP",
                    category="lighting",
                    category_path=["lighting", "lights and lanterns"],
                ),
            )
            for i in range(num_items)
        ],
        model_version="popularity",
        latency_ms=5.0,
        experiment_id="ranker_v2_vs_v3_control",
        request_id="00000000000000000000000000000000",
        degraded=True,
        degraded_reasons=[pb.DEGRADED_REASON_NO_MODEL],
    )


class EchoServicer(pb_grpc.RecommendationServiceServicer):
    """Recommend returns the same response every time; request_id is echoed when sent."""

    def __init__(self, response: pb.RecommendResponse) -> None:
        self._response = response

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.RecommendResponse:
        return self._response

    async def RecordEvents(
        self, request: pb.RecordEventsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.RecordEventsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the echo server only answers Recommend")


async def serve(port: int, response: pb.RecommendResponse) -> None:
    """Serve until SIGTERM / SIGINT."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_RecommendationServiceServicer_to_server(EchoServicer(response), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        raise OSError(f"cannot bind 127.0.0.1:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"echo server on 127.0.0.1:{bound}, response {response.ByteSize()} bytes", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--response-file", type=Path, default=None)
    parser.add_argument("--num-items", type=int, default=10)
    args = parser.parse_args(argv)
    if args.response_file is not None:
        response = pb.RecommendResponse.FromString(args.response_file.read_bytes())
    else:
        response = synthetic_response(args.num_items)
    uvloop.run(serve(args.port, response))


if __name__ == "__main__":
    main()
