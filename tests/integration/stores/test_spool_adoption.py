"""Acknowledged events outlive their process: a real process acknowledges a batch into its
spool while Redis and Postgres are both down and is SIGKILLed (a pod deleted mid-outage);
another process with its own spool file on the same volume adopts the dead one's file once
Postgres is back, and every acknowledged event is stored exactly once."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from feature_service.catalogue import ItemCatalogue
from infra.local.store_servers import PostgresServer, RedisServer
from tests.integration.stores.conftest import OpenStore, make_settings
from tests.integration.stores.helpers import views

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
USER = "17850"
EVENTS = 7
# The writer: opens the layered store, then on each stdin line records the events it names
# and prints the acknowledgement, until it is killed.
_WRITER = """
import asyncio, json, sys
from datetime import datetime
from pathlib import Path
from feature_service.catalogue import ItemCatalogue
from feature_service.config import FeatureStoreSettings
from feature_service.layered import LayeredFeatureStore
from tests.integration.stores.helpers import views

async def main() -> None:
    settings = FeatureStoreSettings.model_validate_json(sys.argv[1])
    data_dir = Path(sys.argv[2])
    store = await LayeredFeatureStore.open(settings, ItemCatalogue.load(data_dir), data_dir)
    print("open", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        ask = json.loads(line)
        batch = views(ask["user"], ask["items"], datetime.fromisoformat(ask["now"]), ask["prefix"])
        result = await store.record_events(batch)
        print(json.dumps({"accepted": result.accepted}), flush=True)

asyncio.run(main())
"""


async def _line(process: asyncio.subprocess.Process, timeout_s: float) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout_s)
    assert line, "the writer process exited"
    return line.decode().strip()


async def test_a_killed_processes_spool_is_adopted_by_another(
    servers_up: tuple[RedisServer, PostgresServer],
    open_store: OpenStore,
    catalogue: ItemCatalogue,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    redis_server, postgres_server = servers_up
    volume = tmp_path / "spool-volume"  # the pod's volume: it outlives the process
    dead_file = volume / "event-spool1.jsonl"
    settings = make_settings(*servers_up, spool_path=dead_file, spool_replay_interval_s=0.2)
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WRITER, settings.model_dump_json(), str(data_dir),
        cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    items = [str(catalogue.item_ids[p]) for p in range(20, 20 + EVENTS)]
    ask = {"user": USER, "items": items, "now": datetime.now(UTC).isoformat(), "prefix": "pod"}
    try:
        assert await _line(writer, 120) == "open"
        redis_server.stop_process()
        postgres_server.stop_process()
        assert writer.stdin is not None
        writer.stdin.write((json.dumps(ask) + "\n").encode())
        await writer.stdin.drain()
        # Acknowledged with both stores down: durable only in the spool file.
        assert json.loads(await _line(writer, 60)) == {"accepted": EVENTS}
        assert dead_file.read_text(encoding="utf-8").count("\n") == EVENTS
        writer.send_signal(signal.SIGKILL)
        await writer.wait()
    finally:
        if writer.returncode is None:
            writer.kill()
            await writer.wait()
        for server in (redis_server, postgres_server):
            if not server.running:
                server.restart()

    # Another process on the same volume, writing a spool file of its own, adopts it.
    registry = CollectorRegistry()
    store = await open_store(registry, spool_path=volume / "event-spool2.jsonl")
    deadline = time.monotonic() + 30
    while dead_file.exists():
        assert time.monotonic() < deadline, "the dead process's spool was not adopted"
        await asyncio.sleep(0.1)
    again = await store.record_events(
        views(USER, items, datetime.fromisoformat(str(ask["now"])), "pod")
    )
    assert (again.accepted, again.duplicates) == (0, EVENTS)  # all stored, once
    assert list(volume.iterdir()) == []
