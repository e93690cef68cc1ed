"""Fixtures that start real servers for integration tests: ``tritonserver`` here."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.local.tritonserver import TritonServer, TritonServerError, TritonServerOptions

# Generous: on a busy 2-core machine the first Python-backend stub can take a while to start.
TRITON_STARTUP_TIMEOUT_S = 120.0

StartTriton = Callable[..., TritonServer]


@pytest.fixture(scope="session")
def start_tritonserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartTriton]:
    """Start ``tritonserver`` on free ports: ``start_tritonserver(repository, **options)``.

    ``options`` are :class:`TritonServerOptions` fields. Each server is ready when returned and
    stopped at the end of the session (or earlier with ``server.stop()``). Fails with the
    server's log tail when it cannot start.
    """
    servers: list[TritonServer] = []

    def start(repository: Path, **options: Any) -> TritonServer:
        base = TritonServerOptions(model_repository=repository, **options)
        for attempt in range(2):
            log_dir = tmp_path_factory.mktemp("tritonserver")
            server = TritonServer(
                dataclasses.replace(base).with_free_ports(),
                log_path=log_dir / "tritonserver.log",
                startup_timeout_s=TRITON_STARTUP_TIMEOUT_S,
            )
            servers.append(server)
            try:
                server.start()
            except TritonServerError:
                # Another process may have taken a port between picking and binding it.
                if attempt == 0 and "already in use" in server.log_tail():
                    continue
                raise
            return server
        raise AssertionError("unreachable")

    yield start
    for server in reversed(servers):
        server.stop()


@pytest.fixture(scope="session")
def models(build_dir: Path) -> Path:
    """The local Triton repository of the full model build (a no-op when `make models` has
    already built it, as `make test` does first)."""
    from tests.conftest import DATA_DIR
    from triton_models.cli import run_pipeline

    run_pipeline(DATA_DIR, build_dir)
    return build_dir / "triton" / "local"
