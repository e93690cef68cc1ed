"""nginx gRPC load balancer: render the template, `nginx -t` it, and proxy real gRPC calls."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from recsys.client import CallPolicy, RecommendationClient, user_event
from recsys.v1 import recommendation_pb2 as pb
from recsys.v1 import recommendation_pb2_grpc as pb_grpc

from infra.local.ports import free_port
from tests.infra.tooling import INFRA, require_tool, run

RENDER = INFRA / "nginx" / "render-config"
TEMPLATE = INFRA / "nginx" / "nginx.conf.template"


def render_config(*args: str) -> str:
    result = run([RENDER, *args])
    assert result.returncode == 0, result.stderr
    return result.stdout


def prefix_dir(tmp_path: Path) -> Path:
    """An nginx prefix with the folders the config's relative paths need."""
    prefix = tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    (prefix / "tmp").mkdir()
    return prefix


def test_render_for_three_gateways() -> None:
    text = render_config("--gateways", "3", "--base-port", "50051")
    assert "${" not in text
    servers = [line.strip() for line in text.splitlines() if line.strip().startswith("server 1")]
    assert servers == [
        f"server 127.0.0.1:{port} max_fails=3 fail_timeout=10s;" for port in (50051, 50052, 50053)
    ]
    assert "grpc_pass grpc://gateways;" in text
    assert "listen 50050 http2;" in text
    assert "keepalive 64;" in text
    assert "grpc_next_upstream error timeout http_502 http_503 http_504;" in text
    assert "grpc_next_upstream_tries 3;" in text
    assert "grpc_read_timeout 10s;" in text
    assert "grpc_send_timeout 10s;" in text
    assert "error_page 502 503 504 = @grpc_unavailable;" in text
    assert "add_header grpc-status 14 always;" in text
    assert "$upstream_addr" in text
    assert "$request_time" in text


def test_render_marks_a_gateway_down() -> None:
    text = render_config("--gateways", "2", "--down", "127.0.0.1:50052")
    servers = [line.strip() for line in text.splitlines() if line.strip().startswith("server 1")]
    assert servers == [
        "server 127.0.0.1:50051 max_fails=3 fail_timeout=10s;",
        "server 127.0.0.1:50052 max_fails=3 fail_timeout=10s down;",
    ]
    result = run([RENDER, "--gateways", "2", "--down", "127.0.0.1:50060"])
    assert result.returncode == 2
    assert "--down 127.0.0.1:50060 is not an upstream" in result.stderr


def test_render_rejects_missing_upstreams() -> None:
    result = run([RENDER])
    assert result.returncode == 2
    assert "no upstreams" in result.stderr
    assert run([RENDER, "--help"]).returncode == 0


def test_every_placeholder_is_documented_and_rendered() -> None:
    template = TEMPLATE.read_text(encoding="utf-8")
    header = template.split("worker_processes", 1)[0]
    body = template[len(header) :]
    placeholders = {part.split("}", 1)[0] for part in body.split("${")[1:]}
    assert placeholders == {
        "NGINX_WORKER_PROCESSES",
        "NGINX_ERROR_LOG",
        "NGINX_ACCESS_LOG",
        "NGINX_UPSTREAM_SERVERS",
        "NGINX_LISTEN",
    }
    for name in placeholders:
        assert name in header


@pytest.mark.parametrize("gateways", [1, 3, 8])
def test_nginx_accepts_the_config(gateways: int, tmp_path: Path) -> None:
    nginx = require_tool("nginx")
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_config("--gateways", str(gateways)), encoding="utf-8")
    result = run([nginx, "-t", "-e", "stderr", "-c", conf, "-p", f"{prefix_dir(tmp_path)}/"])
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.fixture
def health_server() -> Iterator[int]:
    """A real gRPC server with the standard health service (SERVING), on a free port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None).wait()


def wait_for_port(port: int, process: subprocess.Popen[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"nginx exited: {process.communicate()[1]}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"nginx did not listen on {port}")


def nginx_args(listen: int, upstreams: list[str], down: tuple[str, ...] = ()) -> list[str]:
    """render-config arguments: one worker, the error log in the prefix, `down` marked so."""
    args = ["--listen", f"127.0.0.1:{listen}", "--workers", "1", "--error-log", "logs/error.log"]
    for upstream in upstreams:
        args += ["--upstream", upstream]
    for upstream in down:
        args += ["--down", upstream]
    return args


def start_nginx(tmp_path: Path, upstreams: list[str]) -> tuple[subprocess.Popen[str], int, Path]:
    nginx = require_tool("nginx")
    listen = free_port()
    prefix = prefix_dir(tmp_path)
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_config(*nginx_args(listen, upstreams)), encoding="utf-8")
    process = subprocess.Popen(
        [str(nginx), "-e", "stderr", "-c", str(conf), "-p", f"{prefix}/", "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_port(listen, process)
    return process, listen, prefix


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.terminate()
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def health_check(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    status: int = reply.status
    return status


def test_grpc_through_nginx_skips_a_dead_gateway(
    tmp_path: Path, health_server: int, nginx_factory: list[subprocess.Popen[str]]
) -> None:
    dead = free_port()  # nothing listens there
    process, listen, prefix = start_nginx(
        tmp_path, [f"127.0.0.1:{dead}", f"127.0.0.1:{health_server}"]
    )
    nginx_factory.append(process)
    for _ in range(6):
        assert health_check(listen) == health_pb2.HealthCheckResponse.SERVING
    access_log = (prefix / "logs" / "access.log").read_text(encoding="utf-8")
    assert "/grpc.health.v1.Health/Check" in access_log
    assert f"127.0.0.1:{health_server}" in access_log
    # A call that met the dead gateway first was passed on: two upstreams in one log entry.
    assert f"127.0.0.1:{dead}, 127.0.0.1:{health_server}" in access_log


def test_no_gateway_left_is_grpc_unavailable(
    tmp_path: Path, nginx_factory: list[subprocess.Popen[str]]
) -> None:
    process, listen, _ = start_nginx(tmp_path, [f"127.0.0.1:{free_port()}"])
    nginx_factory.append(process)
    with pytest.raises(grpc.RpcError) as info:
        health_check(listen)
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "no gateway available"


class DyingGateway:
    """A TCP listener that takes each call nginx sends it and closes the connection without
    answering: a gateway killed (SIGKILL, OOM, a deleted pod) with the call in flight."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.calls_taken = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                # nginx opens a connection to send a call: the preface, SETTINGS, the call's
                # HEADERS and DATA come in one burst. Take it all, then close unanswered.
                connection.settimeout(2.0)
                received = 0
                try:
                    while chunk := connection.recv(65536):
                        received += len(chunk)
                        connection.settimeout(0.1)
                except TimeoutError:
                    pass
                if received:
                    self.calls_taken += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()


class CountingService(pb_grpc.RecommendationServiceServicer):
    """A gateway that answers every call and counts the ones that reached it."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {"Recommend": 0, "RecordEvents": 0}

    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> Any:
        self.calls["Recommend"] += 1
        return pb.RecommendResponse(model_version="counting")

    def RecordEvents(self, request: pb.RecordEventsRequest, context: grpc.ServicerContext) -> Any:
        self.calls["RecordEvents"] += 1
        return pb.RecordEventsResponse(accepted=len(request.events))


@pytest.fixture
def dying_and_live_gateways() -> Iterator[tuple[DyingGateway, CountingService, int]]:
    dying = DyingGateway()
    service = CountingService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_RecommendationServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield dying, service, port
    finally:
        server.stop(grace=None).wait()
        dying.close()


def test_a_call_in_flight_on_a_dying_gateway_is_unavailable_and_the_client_retry_recovers_it(
    tmp_path: Path,
    dying_and_live_gateways: tuple[DyingGateway, CountingService, int],
    nginx_factory: list[subprocess.Popen[str]],
) -> None:
    """nginx cannot send a gRPC call again once a gateway took it (it streams request bodies
    unbuffered, so `grpc_next_upstream ... non_idempotent` changes nothing): the caller sees
    UNAVAILABLE, and the recsys-client retry policy (both calls are idempotent) gets the answer
    from the gateway that is still up."""
    dying, service, live = dying_and_live_gateways
    upstreams = [f"127.0.0.1:{dying.port}", f"127.0.0.1:{live}"]

    # A bare stub, no retries: each call the dying gateway took fails UNAVAILABLE.
    process, listen, _ = start_nginx(tmp_path / "bare", upstreams)
    nginx_factory.append(process)
    outcomes: list[grpc.StatusCode | None] = []
    with grpc.insecure_channel(f"127.0.0.1:{listen}") as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)
        for _ in range(4):
            try:
                stub.Recommend(pb.RecommendRequest(user_id="17850"), timeout=5)
                outcomes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                outcomes.append(error.code() if isinstance(error, grpc.Call) else None)
    taken = dying.calls_taken
    assert taken >= 1, "nginx never sent a call to the dying gateway"
    assert [code for code in outcomes if code != grpc.StatusCode.OK] == [
        grpc.StatusCode.UNAVAILABLE
    ] * taken
    assert service.calls["Recommend"] == outcomes.count(grpc.StatusCode.OK)

    # The client package through a fresh nginx (which has not yet marked the dying gateway
    # down): every call is answered, those the dying gateway took included.
    process, listen, _ = start_nginx(tmp_path / "client", upstreams)
    nginx_factory.append(process)
    answered_before = dict(service.calls)
    policy = CallPolicy(recommend_timeout_s=5.0, record_events_timeout_s=5.0)
    with RecommendationClient(f"127.0.0.1:{listen}", policy=policy) as client:
        for _ in range(3):
            assert client.recommend("17850", 5).model_version == "counting"
        for number in range(3):
            event = user_event(
                f"e{number}", pb.EVENT_TYPE_CLICK, "17850", "85123A", datetime.now(UTC)
            )
            assert client.record_events([event]).accepted == 1
    assert dying.calls_taken > taken, "nginx never sent a client call to the dying gateway"
    assert service.calls["Recommend"] - answered_before["Recommend"] == 3
    assert service.calls["RecordEvents"] - answered_before["RecordEvents"] == 3


def _workers(master: int) -> set[int]:
    """The pids of nginx's live worker processes (the master's children, from /proc)."""
    workers = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if int(parent) == master and state != "Z":
            workers.add(int(stat.parent.name))
    return workers


def reload_nginx(process: subprocess.Popen[str], conf: Path, text: str) -> None:
    """Writes `text` as nginx's configuration and reloads it; returns once the workers that ran
    the old one have finished their calls and exited, closing their kept-alive gateway
    connections."""
    old = _workers(process.pid)
    conf.write_text(text, encoding="utf-8")
    process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while old & _workers(process.pid) or not _workers(process.pid):
        assert time.monotonic() < deadline, "nginx's old workers did not exit after a reload"
        time.sleep(0.02)


def start_counting_gateway(port: int) -> tuple[grpc.Server, CountingService, int]:
    service = CountingService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_RecommendationServiceServicer_to_server(service, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, service, bound


def test_a_gateway_marked_down_in_nginx_before_its_graceful_stop_loses_no_call(
    tmp_path: Path, nginx_factory: list[subprocess.Popen[str]]
) -> None:
    """A gateway that nginx still routes to can fail, when stopped gracefully, the one call that
    reaches it in the instant its shutdown begins: gRPC core answers CANCELLED to every call
    that arrives after shutdown started, and nginx may write the next call on a kept-alive
    connection before it has read the gateway's GOAWAY (tests/integration/test_stack.py). With
    the gateway marked `down` and nginx reloaded first, nothing reaches it any more, and its
    graceful stop loses no call, while calls keep flowing through the reloads."""
    gateways = [start_counting_gateway(0), start_counting_gateway(0)]
    upstreams = [f"127.0.0.1:{port}" for _, _, port in gateways]
    process, listen, _ = start_nginx(tmp_path, upstreams)
    nginx_factory.append(process)
    conf = tmp_path / "nginx.conf"

    failures: list[tuple[grpc.StatusCode | None, str | None]] = []
    answered = 0
    done = threading.Event()

    def call_in_a_loop() -> None:
        nonlocal answered
        with grpc.insecure_channel(f"127.0.0.1:{listen}") as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)
            while not done.is_set():
                try:
                    stub.Recommend(pb.RecommendRequest(user_id="17850"), timeout=5)
                    answered += 1
                except grpc.RpcError as error:
                    if isinstance(error, grpc.Call):
                        failures.append((error.code(), error.details()))
                    else:
                        failures.append((None, None))

    caller = threading.Thread(target=call_in_a_loop, daemon=True)
    caller.start()
    try:
        for victim in (0, 1):
            server, _, port = gateways[victim]
            reload_nginx(
                process, conf, render_config(*nginx_args(listen, upstreams, (upstreams[victim],)))
            )
            server.stop(grace=5).wait()
            time.sleep(0.2)  # calls go on with one gateway
            gateways[victim] = start_counting_gateway(port)
            reload_nginx(process, conf, render_config(*nginx_args(listen, upstreams)))
            restarted = gateways[victim][1]
            deadline = time.monotonic() + 5
            while restarted.calls["Recommend"] == 0:
                assert time.monotonic() < deadline, "nginx sent nothing to the restarted gateway"
                time.sleep(0.02)
    finally:
        done.set()
        caller.join(timeout=10)
        for server, _, _ in gateways:
            server.stop(grace=None).wait()
    assert failures == []
    assert answered > 50
