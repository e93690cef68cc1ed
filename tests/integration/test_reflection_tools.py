"""ghz and grpcurl against a running gateway by server reflection alone (no -proto, no
-import-path): method symbols resolve, and the imported well-known types come with them. The
commands `make run` prints work, with grpcurl and without it."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2
from recsys.v1 import recommendation_pb2 as pb

from gateway.server import RunningServer
from infra.local.call_examples import call_examples, find_grpcurl
from tests.conftest import REPO, async_stub, timestamp

pytestmark = pytest.mark.integration

Gateway = tuple[RunningServer, grpc.aio.Channel]
TOOLS = REPO / ".tools" / "bin"


def _tool(name: str) -> Path:
    binary = TOOLS / name
    assert binary.is_file(), f"{binary} not found: run `make tools`"
    return binary


async def _run(argv: Sequence[str | Path]) -> subprocess.CompletedProcess[str]:
    done = await asyncio.to_thread(
        subprocess.run, [str(a) for a in argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}"
    return done


async def test_ghz_calls_both_methods_by_reflection(gateway: Gateway) -> None:
    server, channel = gateway
    target = f"127.0.0.1:{server.port}"
    ghz = _tool("ghz")
    recommend = await _run(
        [
            ghz,
            "--insecure",
            "--call",
            "recsys.v1.RecommendationService/Recommend",
            "-d",
            '{"user_id": "17850", "num_items": 3}',
            "-n",
            "20",
            "-c",
            "2",
            "--format",
            "json",
            target,
        ]
    )
    report = json.loads(recommend.stdout)
    assert report["count"] == 20
    assert report["statusCodeDistribution"] == {"OK": 20}
    # RecordEvents carries a google.protobuf.Timestamp: ghz builds it from reflection's copy of
    # timestamp.proto. One event id per request (ghz's template), all acknowledged.
    sent = datetime.now(UTC).replace(microsecond=0)
    event = {
        "event_id": "ghz-reflection-{{.RequestNumber}}",
        "type": "EVENT_TYPE_PRODUCT_VIEW",
        "user_id": "17850",
        "item_id": "85123A",
        "timestamp": sent.isoformat().replace("+00:00", "Z"),
    }
    events = await _run(
        [
            ghz,
            "--insecure",
            "--call",
            "recsys.v1.RecommendationService.RecordEvents",
            "-d",
            json.dumps({"events": [event]}),
            "-n",
            "5",
            "-c",
            "1",
            "--format",
            "json",
            target,
        ]
    )
    assert json.loads(events.stdout)["statusCodeDistribution"] == {"OK": 5}
    # The five events are stored: sending them again finds each one a duplicate.
    again = pb.RecordEventsRequest(
        events=[
            pb.UserEvent(
                event_id=f"ghz-reflection-{n}",
                type=pb.EVENT_TYPE_PRODUCT_VIEW,
                user_id="17850",
                item_id="85123A",
                timestamp=timestamp(sent),
            )
            for n in range(5)
        ]
    )
    reply = await async_stub(channel).RecordEvents(again, timeout=5)
    assert (reply.accepted, reply.duplicates) == (0, 5)


async def test_grpcurl_describes_and_calls_by_reflection(gateway: Gateway) -> None:
    server, _ = gateway
    target = f"127.0.0.1:{server.port}"
    grpcurl = _tool("grpcurl")
    method = await _run(
        [grpcurl, "-plaintext", target, "describe", "recsys.v1.RecommendationService.Recommend"]
    )
    assert "rpc Recommend ( .recsys.v1.RecommendRequest ) returns" in method.stdout
    event = await _run([grpcurl, "-plaintext", target, "describe", "recsys.v1.UserEvent"])
    assert ".google.protobuf.Timestamp timestamp = 6;" in event.stdout
    wkt = await _run([grpcurl, "-plaintext", target, "describe", "google.protobuf.Timestamp"])
    assert "int64 seconds = 1;" in wkt.stdout
    methods = await _run(
        [grpcurl, "-plaintext", target, "list", "recsys.v1.ExperimentAdminService"]
    )
    assert "recsys.v1.ExperimentAdminService.ListExperiments" in methods.stdout.split()
    # A RequestContext with its client_time (a Timestamp) set, from JSON, by reflection only.
    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    request = {
        "user_id": "17850",
        "num_items": 4,
        "context": {"device": "DEVICE_MOBILE", "page": "PAGE_HOME", "client_time": now},
    }
    called = await _run(
        [
            grpcurl,
            "-plaintext",
            "-d",
            json.dumps(request),
            target,
            "recsys.v1.RecommendationService/Recommend",
        ]
    )
    reply = json.loads(called.stdout)
    assert len(reply["recommendations"]) == 4
    assert "DEGRADED_REASON_CLIENT_CLOCK_SKEW" not in reply.get("degradedReasons", [])
    unknown = await asyncio.to_thread(
        subprocess.run,
        [str(grpcurl), "-plaintext", target, "describe", "recsys.v1.RecommendationService.Nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode != 0
    assert "Symbol not found: recsys.v1.RecommendationService.Nope" in unknown.stderr


async def test_the_commands_make_run_prints_work(gateway: Gateway) -> None:
    server, _ = gateway
    target = f"127.0.0.1:{server.port}"
    listed, called = call_examples(target, find_grpcurl(TOOLS), sys.executable)
    assert str(_tool("grpcurl")) in listed
    assert "recsys.v1.RecommendationService" in (await _run(shlex.split(listed))).stdout.split()
    reply = json.loads((await _run(shlex.split(called))).stdout)
    assert len(reply["recommendations"]) == 5
    # Without grpcurl: the service's own Python and the client module.
    command, _hint = call_examples(target, None, sys.executable)
    reply = json.loads((await _run(shlex.split(command))).stdout)
    assert len(reply["recommendations"]) == 5


async def test_the_stable_reflection_version_answers_too(gateway: Gateway) -> None:
    _, channel = gateway
    # grpc.reflection.v1 has v1alpha's messages under another package: same bytes on the wire.
    info: grpc.aio.StreamStreamMultiCallable[Any, Any] = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="recsys.v1.RecommendationService.Recommend"
        ),
    ]
    listed, found = [response async for response in info(iter(requests), timeout=5)]
    services = {s.name for s in listed.list_services_response.service}
    assert {
        "recsys.v1.RecommendationService",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    files = {
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in found.file_descriptor_response.file_descriptor_proto
    }
    assert files == {"recsys/v1/recommendation.proto", "google/protobuf/timestamp.proto"}
