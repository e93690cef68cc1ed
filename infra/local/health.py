"""Readiness polling for servers started on this machine: a TCP listener, the standard gRPC
health service, an HTTP endpoint that answers 200 (Triton's /v2/health/ready, a gateway's
/health). One probe each, and one loop that repeats a probe until it passes, time runs out or
the caller is stopping."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def poll_until(
    check: Callable[[], bool],
    timeout_s: float,
    *,
    interval_s: float = 0.5,
    stopped: threading.Event | None = None,
) -> bool:
    """Calls `check` until it returns True (then True), `timeout_s` passes or `stopped` is set
    (then False). `check` may raise to end the wait early (a process that exited)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (stopped is not None and stopped.is_set()):
        if check():
            return True
        if stopped is not None:
            stopped.wait(interval_s)
        else:
            time.sleep(interval_s)
    return False


def accepts_connections(target: str, timeout_s: float = 0.5) -> bool:
    """Whether `target` (host:port, [v6]:port) accepts a TCP connection, with plain sockets."""
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout_s: float) -> bool:
    """Whether a GET of `url` answers 200 within `timeout_s` (False while nothing listens, or
    while Triton still loads its models: it answers 400 then)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except OSError:  # URLError (HTTPError too), refused or reset connections, timeouts
        return False


def grpc_serving(
    stub: health_pb2_grpc.HealthStub,
    *,
    timeout_s: float = 1.0,
    metadata: Sequence[tuple[str, str]] = (),
) -> bool:
    """Whether the gRPC health service (service "") answers SERVING; False on any RPC error."""
    try:
        reply = stub.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout_s, metadata=metadata
        )
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def wait_until_serving(
    target: str, timeout_s: float, stopped: threading.Event | None = None
) -> bool:
    """Polls the gRPC health service of `target` until it reports SERVING; False on timeout or
    stop.

    No gRPC channel is opened before `target` listens: a fork while this process's gRPC
    threads run can abort it ("Check failed: next_worker->state == KICKED" in
    ev_epoll1_linux.cc, seen once in the stack test when honcho forked every process from the
    runner). supervisord now forks in a process of its own, started before this runs; the wait
    keeps the runner safe should it ever fork again.
    """
    deadline = time.monotonic() + timeout_s
    if not poll_until(
        lambda: accepts_connections(target), timeout_s, interval_s=0.2, stopped=stopped
    ):
        return False
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return poll_until(
            lambda: grpc_serving(stub), max(deadline - time.monotonic(), 0.0), stopped=stopped
        )


def wait_until_http_ok(url: str, timeout_s: float, stopped: threading.Event | None = None) -> bool:
    """Polls `url` until a GET answers 200 (Triton's /v2/health/ready once every model is
    loaded, a gateway's /health once it serves); False on timeout or stop."""
    return poll_until(lambda: http_ok(url, timeout_s=1.0), timeout_s, stopped=stopped)
