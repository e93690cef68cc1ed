"""Fixtures shared by every test: the built data, settings, and a running gateway."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
import pyarrow.parquet as pq
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.parser import text_string_to_metric_families
from recsys.v1 import recommendation_pb2 as pb
from recsys.v1 import recommendation_pb2_grpc as pb_grpc

from gateway.config import Settings, load_settings
from gateway.resources import open_resources
from gateway.server import RunningServer, start_server
from triton_models.cli import run_ingest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data" / "uci_online_retail"
LOCAL_CONFIG = REPO / "infra" / "config" / "local.yaml"


@pytest.fixture(scope="session")
def build_dir() -> Path:
    """The build folder with canonical tables from the real data (built once, then reused)."""
    build = REPO / "build"
    run_ingest(DATA_DIR, build / "data")
    return build


@pytest.fixture
def make_settings(build_dir: Path, tmp_path: Path) -> Callable[..., Settings]:
    """Settings from the local profile with private logs, free ports and no ranker model (the
    popularity fallback answers; `tests/integration/test_serving_path.py` covers Triton).

    Keyword arguments are extra `RECSYS__...` overrides, e.g. `SERVING__MAX_EXCLUDE_ITEMS="2"`.
    """

    def make(**overrides: str) -> Settings:
        environ = {
            "RECSYS__MODEL__ARTIFACTS_DIR": str(build_dir),
            "RECSYS__MODEL__REPOSITORY_DIR": str(tmp_path / "no-model-repository"),
            "RECSYS__FEATURE_STORE__EMBEDDED__EVENT_LOG_PATH": str(tmp_path / "events.sqlite3"),
            "RECSYS__AB_TESTING__EXPOSURE_LOG_PATH": str(tmp_path / "exposures.sqlite3"),
            "RECSYS__SERVING__PORT": "0",
            "RECSYS__MONITORING__METRICS__PORT": "0",
        }
        environ.update({f"RECSYS__{key}": value for key, value in overrides.items()})
        return load_settings(LOCAL_CONFIG, environ)

    return make


@contextlib.asynccontextmanager
async def running_gateway(
    settings: Settings, tracer_provider: TracerProvider | None = None
) -> AsyncIterator[tuple[RunningServer, grpc.aio.Channel]]:
    """Starts the real asyncio server on a free port and yields it with a channel to it."""
    async with open_resources(settings, tracer_provider=tracer_provider) as resources:
        server = await start_server(settings, resources)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                yield server, channel
        finally:
            await server.drain_and_stop(0)


@pytest.fixture
async def gateway(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[tuple[RunningServer, grpc.aio.Channel]]:
    """A gateway with the local profile's settings."""
    async with running_gateway(make_settings()) as running:
        yield running


@pytest.fixture
def real_user_ids(build_dir: Path) -> list[str]:
    """Customer ids from the data set, most active first."""
    users = pq.read_table(build_dir / "data" / "users.parquet").to_pandas()
    ids: list[str] = users.sort_values("orders", ascending=False)["user_id"].head(50).tolist()
    return ids


def status_of(error: Any) -> tuple[grpc.StatusCode, str]:
    """(code, details) of an `AioRpcError`."""
    return error.code(), error.details()


def async_stub(channel: grpc.aio.Channel) -> pb_grpc.RecommendationServiceAsyncStub:
    """The service stub on an asyncio channel, typed as such."""
    # The async stub type exists only in the generated .pyi (mypy-protobuf).
    return cast(
        "pb_grpc.RecommendationServiceAsyncStub", pb_grpc.RecommendationServiceStub(channel)
    )


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def timestamp(moment: datetime) -> Timestamp:
    """`moment` as a protobuf Timestamp."""
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def user_event(
    event_id: str, kind: int = pb.EVENT_TYPE_PRODUCT_VIEW, **fields: object
) -> pb.UserEvent:
    """A valid event of user 17850 on item 85123A now; `fields` override any of it."""
    values: dict[str, object] = {
        "event_id": event_id,
        "type": kind,
        "user_id": "17850",
        "item_id": "85123A",
        "timestamp": timestamp(datetime.now(UTC)),
    }
    values.update(fields)
    return pb.UserEvent(**values)  # type: ignore[arg-type]
