"""Token authentication, rate limiting, TLS and mutual TLS on the real server."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from recsys.v1 import recommendation_pb2 as pb

from gateway.config import ConfigError, Settings
from gateway.resources import open_resources
from gateway.server import start_server
from tests.conftest import async_stub, running_gateway, user_event
from tests.infra.tooling import INFRA, require_tool, run

pytestmark = pytest.mark.integration
TOKEN = "s3cret-token-for-tests"


def _events() -> pb.RecordEventsRequest:
    return pb.RecordEventsRequest(events=[user_event("auth-1", pb.EVENT_TYPE_CLICK)])


async def test_record_events_needs_the_token(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(SERVING__AUTH__TOKEN=TOKEN)
    async with running_gateway(settings) as (_, channel):
        stub = async_stub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.RecordEvents(_events(), metadata=metadata, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert TOKEN not in (caught.value.details() or "")
        reply = await stub.RecordEvents(
            _events(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=5
        )
        assert reply.accepted == 1
        # Reading recommendations needs no token.
        assert (await stub.Recommend(pb.RecommendRequest(user_id="1"), timeout=5)).recommendations


async def test_token_from_a_mounted_file(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    settings = make_settings(SERVING__AUTH__TOKEN_FILE=str(secret), SERVING__AUTH__REQUIRED="true")
    async with running_gateway(settings) as (_, channel):
        reply = await async_stub(channel).RecordEvents(
            _events(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=5
        )
        assert reply.accepted == 1


async def test_required_token_missing_stops_start_up(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(SERVING__AUTH__REQUIRED="true")
    async with open_resources(settings) as resources:
        with pytest.raises(ConfigError, match="serving.auth: a token is required"):
            await start_server(settings, resources)


async def test_rate_limit_per_client(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(SERVING__RATE_LIMIT="5/minute")
    async with running_gateway(settings) as (_, channel):
        stub = async_stub(channel)
        for _ in range(5):
            await stub.Recommend(pb.RecommendRequest(user_id="1"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Recommend(pb.RecommendRequest(user_id="1"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit of 5/minute" in (caught.value.details() or "")


def test_invalid_rate_limit_is_a_config_error(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match="serving.rate_limit"):
        make_settings(SERVING__RATE_LIMIT="lots")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for localhost and a client certificate, all signed by it."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
    )
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.crt"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(ext),
            "-out",
            str(d / f"{name}.crt"),
        )
    return d


async def test_mutual_tls(make_settings: Callable[..., Settings], pki: Path) -> None:
    settings = make_settings(
        SERVING__TLS__CERT_FILE=str(pki / "server.crt"),
        SERVING__TLS__KEY_FILE=str(pki / "server.key"),
        SERVING__TLS__CLIENT_CA_FILE=str(pki / "ca.crt"),
    )
    ca = (pki / "ca.crt").read_bytes()
    async with open_resources(settings) as resources:
        server = await start_server(settings, resources)
        target = f"localhost:{server.port}"
        try:
            with_cert = grpc.ssl_channel_credentials(
                ca, (pki / "client.key").read_bytes(), (pki / "client.crt").read_bytes()
            )
            async with grpc.aio.secure_channel(target, with_cert) as channel:
                reply = await async_stub(channel).Recommend(
                    pb.RecommendRequest(user_id="17850", num_items=2), timeout=10
                )
                assert len(reply.recommendations) == 2
            # Without a client certificate the handshake fails: the call never reaches us.
            async with grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca)) as bare:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await async_stub(bare).Recommend(pb.RecommendRequest(user_id="1"), timeout=5)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            # Plaintext clients cannot talk to a TLS port either.
            async with grpc.aio.insecure_channel(target) as plain:
                with pytest.raises(grpc.aio.AioRpcError):
                    await async_stub(plain).Recommend(pb.RecommendRequest(user_id="1"), timeout=5)
        finally:
            await server.drain_and_stop(0)


def test_tls_settings_need_cert_and_key(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match="cert_file and key_file must be set together"):
        make_settings(SERVING__TLS__CERT_FILE="/x.crt")


async def test_rate_limit_per_client_behind_nginx(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Two clients reach the gateway through real nginx, so the gateway's peer is nginx for
    both; with nginx trusted, the one over its limit is refused and the other is not."""
    # nginx reaches the gateway from 127.0.0.1.
    settings = make_settings(SERVING__RATE_LIMIT="5/minute", SERVING__TRUSTED_PROXIES="127.0.0.1")
    async with running_gateway(settings) as (server, _):
        nginx, port = _nginx_on_both_loopbacks(tmp_path, server.port)
        try:
            # Two real clients with different addresses: IPv4 and IPv6 loopback.
            async with (
                grpc.aio.insecure_channel(f"127.0.0.1:{port}") as noisy_channel,
                grpc.aio.insecure_channel(f"ipv6:[::1]:{port}") as quiet_channel,
            ):
                noisy, quiet = async_stub(noisy_channel), async_stub(quiet_channel)
                request = pb.RecommendRequest(user_id="1")
                for _ in range(5):
                    await noisy.Recommend(request, timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await noisy.Recommend(request, timeout=5)
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "rate limit of 5/minute per client" in (caught.value.details() or "")
                for _ in range(4):  # under its own limit, whatever the noisy one does
                    assert (await quiet.Recommend(request, timeout=5)).recommendations
        finally:
            nginx.terminate()
            nginx.communicate(timeout=10)
        access_log = (tmp_path / "nginx" / "logs" / "access.log").read_text(encoding="utf-8")
        assert '"client":"::1"' in access_log
        assert '"client":"127.0.0.1"' in access_log


async def test_forwarded_client_is_ignored_from_an_untrusted_peer(
    make_settings: Callable[..., Settings],
) -> None:
    """Without trusted proxies, a client naming a new address per call is still one client."""
    settings = make_settings(SERVING__RATE_LIMIT="3/minute")
    async with running_gateway(settings) as (_, channel):
        stub = async_stub(channel)
        request = pb.RecommendRequest(user_id="1")
        for n in range(3):
            spoofed = (("x-forwarded-for", f"203.0.113.{n}"), ("x-real-ip", f"203.0.113.{n}"))
            await stub.Recommend(request, metadata=spoofed, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Recommend(request, metadata=(("x-real-ip", "198.51.100.1"),), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _nginx_on_both_loopbacks(tmp_path: Path, upstream: int) -> tuple[subprocess.Popen[str], int]:
    """Real nginx (the stack's rendered config) in front of `upstream`, listening on
    127.0.0.1 and [::1] at one free port."""
    nginx = require_tool("nginx")
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = int(probe.getsockname()[1])
    prefix = tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    (prefix / "tmp").mkdir()
    rendered = run(
        [
            INFRA / "nginx" / "render-config",
            *("--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{upstream}"),
            *("--workers", "1"),
        ]
    )
    assert rendered.returncode == 0, rendered.stderr
    ipv4_listen = f"listen 127.0.0.1:{port} http2;"
    assert ipv4_listen in rendered.stdout
    config = tmp_path / "nginx.conf"
    config.write_text(
        rendered.stdout.replace(ipv4_listen, f"{ipv4_listen}\n        listen [::1]:{port} http2;"),
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [str(nginx), "-e", "stderr", "-c", str(config), "-p", f"{prefix}/", "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    while True:
        assert process.poll() is None, f"nginx exited: {process.communicate()[1]}"
        with socket.socket(socket.AF_INET6) as s6, socket.socket() as s4:
            if s6.connect_ex(("::1", port)) == 0 and s4.connect_ex(("127.0.0.1", port)) == 0:
                return process, port
        assert time.monotonic() < deadline, "nginx did not listen"
        time.sleep(0.05)
