"""Token authentication, rate limiting, TLS and mutual TLS on the real server."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from recsys.v1 import recommendation_pb2 as pb

from gateway.config import ConfigError, Settings
from gateway.resources import open_resources
from gateway.server import start_server
from tests.conftest import async_stub, running_gateway, user_event

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
