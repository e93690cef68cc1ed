"""The load benchmark measures a deployment it did not start: `--target` with TLS and a token.

A real gateway (TLS on, a token configured) is started by the test; `benchmarks.ghz_scenarios`
runs a short sweep against it with ghz and its own sample call, both over TLS with a CA file,
a server-name override (the certificate names `recsys.test`, the address is 127.0.0.1) and
the bearer token. Bounded: about 5 s of load at 2 concurrent calls.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks import ghz_scenarios
from benchmarks.harness.ghz import find_ghz
from gateway.config import Settings
from gateway.resources import open_resources
from gateway.server import start_server

pytestmark = pytest.mark.integration
SERVER_NAME = "recsys.test"
TOKEN = "bench-token-for-tests"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for SERVER_NAME only, and its key."""
    folder = tmp_path_factory.mktemp("bench-tls")
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={SERVER_NAME}",
            "-addext",
            f"subjectAltName=DNS:{SERVER_NAME}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def test_sweep_against_a_running_tls_gateway_with_a_token(
    make_settings: Callable[..., Settings], certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    find_ghz()  # fails with how to install it
    cert, key = certificate
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    settings = make_settings(
        SERVING__TLS__CERT_FILE=str(cert),
        SERVING__TLS__KEY_FILE=str(key),
        SERVING__AUTH__TOKEN=TOKEN,
        SERVING__RATE_LIMIT="",  # ghz is one client
    )
    results = tmp_path / "results"
    async with open_resources(settings) as resources:
        server = await start_server(settings, resources)
        try:
            argv = [
                "sweep",
                "--quick",
                "--levels",
                "2",
                "--requests",
                "50",
                "--label",
                "external",
                "--results-dir",
                str(results),
                "--target",
                f"127.0.0.1:{server.port}",
                "--ca-file",
                str(cert),
                "--server-name",
                SERVER_NAME,
                "--token-file",
                str(token_file),
            ]
            # The benchmark blocks on ghz; the gateway answers on this event loop meanwhile.
            assert await asyncio.to_thread(ghz_scenarios.main, argv) == 0
        finally:
            await server.drain_and_stop(0)

    (report_file,) = results.glob("load-*-external.json")
    report = json.loads(report_file.read_text(encoding="utf-8"))
    settings_used = report["settings"]
    assert settings_used["profile"] == (
        f"external target 127.0.0.1:{server.port}: "
        f"TLS (CA {cert}, server name {SERVER_NAME}), bearer token"
    )
    assert TOKEN not in report_file.read_text(encoding="utf-8")
    # The benchmark's own call reached the gateway over TLS and was answered.
    assert settings_used["gateway_answer"]["items"] > 0
    (level,) = report["scenarios"]["sweep"]["levels"]
    assert level["concurrency"] == 2
    assert level["ok"] > 0 and level["errors"] == 0, level
    assert level["server_cpu_s"] is None  # the deployment's processes are not ours to sample
    assert set(report["scenarios"]) >= {"sweep"}
    assert "ceilings" not in report["scenarios"] and "profile" not in report["scenarios"]


def test_scenarios_that_start_servers_are_refused_for_a_target(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"\['ceilings'\] cannot run against --target"):
        ghz_scenarios.main(["ceilings", "--target", "127.0.0.1:1", "--results-dir", str(tmp_path)])
