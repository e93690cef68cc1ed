"""SIGKILL of a gateway process in the middle of a RecordEvents stream (issue #10).

Error budget: zero. Every event of a batch the gateway acknowledged is in the SQLite event log
exactly once after the crash and the client's retries; no event id is stored twice; replaying
an acknowledged batch stores nothing new (all duplicates).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from recsys.v1 import recommendation_pb2 as pb
from recsys.v1 import recommendation_pb2_grpc as pb_grpc

from tests.integration.faults.conftest import GatewayProcess, gateway_env

pytestmark = pytest.mark.integration
BATCHES = 400
EVENTS_PER_BATCH = 20
SENDERS = 4
KILL_AFTER_ACKS = 40
RPC_TIMEOUT_S = 5.0


def _batch(index: int, at: Timestamp) -> pb.RecordEventsRequest:
    return pb.RecordEventsRequest(
        events=[
            pb.UserEvent(
                event_id=f"kill-{index:04d}-{i:02d}",
                type=pb.EVENT_TYPE_PRODUCT_VIEW,
                user_id=f"fault-user-{index % 17}",
                item_id="85123A",
                request_id=f"req-{index}",
                timestamp=at,
            )
            for i in range(EVENTS_PER_BATCH)
        ]
    )


def _stored_ids(path: Path) -> list[str]:
    """Every stored event id (duplicates included, were the key ever to allow them), read-only."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        return [row[0] for row in connection.execute("SELECT event_id FROM events")]


def test_acknowledged_events_survive_sigkill_exactly_once(
    build_dir: Path, tmp_path: Path, gateway_processes: list[GatewayProcess]
) -> None:
    work = tmp_path
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    batches = [_batch(i, stamp) for i in range(BATCHES)]
    env = gateway_env(build_dir, work)
    first = GatewayProcess(env, work / "gateway-1.log")
    gateway_processes.append(first)
    first.start()

    acked: dict[int, pb.RecordEventsResponse] = {}
    failed: dict[int, grpc.StatusCode] = {}
    lock = threading.Lock()
    enough = threading.Event()

    def send(channel: grpc.Channel, index: int) -> None:
        stub = pb_grpc.RecommendationServiceStub(channel)
        try:
            reply = stub.RecordEvents(batches[index], timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as error:
            with lock:
                failed[index] = error.code()
            return
        with lock:
            acked[index] = reply
            if len(acked) >= KILL_AFTER_ACKS:
                enough.set()

    with (
        grpc.insecure_channel(first.target) as channel,
        ThreadPoolExecutor(SENDERS) as pool,
    ):
        futures = [pool.submit(send, channel, i) for i in range(BATCHES)]
        assert enough.wait(60), f"no {KILL_AFTER_ACKS} acknowledgements:\n{first.log_tail()}"
        first.kill()  # mid-stream: batches are in flight on every sender
        killed_at = time.monotonic()
        for future in futures:
            future.result()

    assert len(acked) + len(failed) == BATCHES
    assert KILL_AFTER_ACKS <= len(acked) < BATCHES, "the kill did not land mid-stream"
    assert set(failed.values()) <= {grpc.StatusCode.UNAVAILABLE}, failed
    for reply in acked.values():  # fresh ids: a first acknowledgement stores all of them
        assert (reply.accepted, reply.duplicates) == (EVENTS_PER_BATCH, 0)

    second = GatewayProcess(env, work / "gateway-2.log")  # same event log
    gateway_processes.append(second)
    second.start()
    recovery_s = time.monotonic() - killed_at
    replayed_acked = sorted(acked)[:: max(1, len(acked) // 10)]
    committed_unacked = 0
    with grpc.insecure_channel(second.target) as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)
        for index in sorted(failed):  # the client's retry of everything not acknowledged
            reply = stub.RecordEvents(batches[index], timeout=RPC_TIMEOUT_S)
            # A batch committed just before the kill, its reply lost, comes back as duplicates.
            assert reply.accepted + reply.duplicates == EVENTS_PER_BATCH
            assert reply.accepted in (0, EVENTS_PER_BATCH), "a batch was half stored"
            committed_unacked += reply.accepted == 0
        for index in replayed_acked:  # idempotency: acknowledged batches change nothing
            reply = stub.RecordEvents(batches[index], timeout=RPC_TIMEOUT_S)
            assert (reply.accepted, reply.duplicates) == (0, EVENTS_PER_BATCH)
    assert second.stop() == 0, second.log_tail()

    stored = _stored_ids(work / "events.sqlite3")
    expected = {e.event_id for b in batches for e in b.events}
    assert len(stored) == len(set(stored)), "an event is stored twice"
    acked_ids = {e.event_id for i in acked for e in batches[i].events}
    assert acked_ids <= set(stored), f"lost {len(acked_ids - set(stored))} acknowledged events"
    assert set(stored) == expected  # and after the retries, nothing is missing or extra
    print(
        f"\nkill: {len(acked)} batches acknowledged, {len(failed)} retried "
        f"({committed_unacked} of them committed before the kill, reply lost); "
        f"kill to SERVING again {recovery_s:.1f} s"
    )
