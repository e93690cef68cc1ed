"""Faults under concurrent load: a supervised system (infra/local/runner.py under supervisord), a
closed- or open-loop driver of concurrent callers that records every answer, SIGKILL of one
supervised process while traffic flows, and the per-fault figures.

The driver is ours rather than ghz because a fault's figures need each answer's content
(degraded, and whether Triton ranked it) and the ids of the events the service acknowledged,
which are then counted in the store: an acknowledged event missing there is lost.

Per fault (`summarise_fault`): non-OK answers by status code, the share of degraded answers,
p99 latency while it lasted, the seconds until answers were whole again (OK, features
available and, when the system runs Triton, ranked by it, for `HEALTHY_SPAN_S` in a row) and
until the killed process served again (a gateway's /health, Triton ready, a store's new pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sqlite3
import sys
import time
import xmlrpc.client
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from recsys.client import CallPolicy, channel_options
from recsys.v1 import recommendation_pb2 as pb
from recsys.v1 import recommendation_pb2_grpc as pb_grpc
from supervisor.xmlrpc import SupervisorTransport

from benchmarks.harness.ghz import percentile
from benchmarks.harness.procs import (
    LOCAL_CONFIG,
    STACK_CONFIG,
    Process,
    start_process,
    wait_for_health,
    wait_for_http_health,
)
from gateway.config import Settings, load_settings
from infra.local import profiles
from infra.local.health import http_ok
from infra.local.ports import free_port_block
from infra.local.supervision import SupervisorFiles

HEALTHY_SPAN_S = 2.0
"""Answers count as recovered once those started in this long a span are whole..."""
RECOVERED_BAD_SHARE = 0.01
"""...but for this share: on a busy machine a few answers miss a stage's budget (features,
ranker) with no fault at all (0.3-1% here), and one such answer must not hide a recovery."""
# Reasons that mean the answer was not ranked by Triton.
_UNRANKED = frozenset(
    {
        pb.DEGRADED_REASON_NO_MODEL,
        pb.DEGRADED_REASON_RANKER_UNAVAILABLE,
        pb.DEGRADED_REASON_RANKER_TIMEOUT,
    }
)
# Status codes the service may answer under overload by design (shedding), not failures.
SHEDDING = frozenset({"RESOURCE_EXHAUSTED"})


@dataclass(frozen=True)
class Answer:
    """One call as the client saw it."""

    started_s: float
    """When it was sent, seconds since the drive began."""
    latency_s: float
    method: str
    """Recommend or RecordEvents."""
    code: str
    """The status code's name (OK, UNAVAILABLE, ...)."""
    degraded: bool = False
    ranked: bool = True
    """Scored by Triton (no ranker reason among the degraded reasons)."""
    features: bool = True
    """No FEATURES_UNAVAILABLE among the degraded reasons."""

    def whole(self, ranked: bool) -> bool:
        """Answered as if nothing had failed (`ranked`: the system has a ranker to rank it)."""
        return self.code == "OK" and self.features and (self.ranked or not ranked)


@dataclass
class Drive:
    """What a drive recorded so far (appended while it runs)."""

    answers: list[Answer] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    """Ids of events the service acknowledged (RecordEvents answered OK)."""
    started: float = field(default_factory=time.monotonic)
    """time.monotonic() at the start (made, so faults can be timed before the first call)."""

    def now_s(self) -> float:
        return time.monotonic() - self.started


def _timestamp(now: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(now)
    return stamp


async def drive(
    target: str,
    users: Sequence[str],
    record: Drive,
    stop: asyncio.Event,
    *,
    callers: int = 32,
    connections: int = 8,
    rate: float | None = None,
    events_every: int = 10,
    timeout_s: float = 2.0,
    run_id: str = "chaos",
    client_retries: bool = True,
) -> None:
    """Calls `target` from `callers` concurrent callers over `connections` connections until
    `stop` is set; every `events_every`-th call of a caller is a RecordEvents of one new view.
    Times are counted from `record.started` (when `record` was made).

    `rate` (calls/s over all callers) paces the calls on a fixed schedule (open loop, capped
    by the callers: a late call is sent at once, never skipped); None: each caller sends its
    next call as soon as the previous one is answered (closed loop).

    `client_retries`: each channel carries recsys-client's retry policy (UNAVAILABLE retried,
    throttled), as callers using the client package do: a call in flight on a gateway that is
    killed ends UNAVAILABLE (neither SO_REUSEPORT nor nginx can hand it to another gateway),
    and the retry gets it answered. False: every failure reaches the caller.
    """
    # A subchannel pool per channel: separate TCP connections, which SO_REUSEPORT and nginx
    # spread over the gateways, as separate clients would be.
    options: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]
    if client_retries:
        options += channel_options(CallPolicy(recommend_timeout_s=timeout_s))
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
    slots = itertools.count()

    async def caller(index: int) -> None:
        # The async stub type exists only in the generated .pyi (mypy-protobuf).
        stub = cast(
            "pb_grpc.RecommendationServiceAsyncStub",
            pb_grpc.RecommendationServiceStub(channels[index % connections]),
        )
        for n in itertools.count():
            if stop.is_set():
                return
            slot = next(slots)
            if rate is not None:
                delay = record.started + slot / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                    if stop.is_set():
                        return
            user = users[slot % len(users)]
            sent = time.monotonic()
            if n % events_every == events_every - 1:
                event_id = f"{run_id}-{index}-{n}"
                events = pb.RecordEventsRequest(
                    events=[
                        pb.UserEvent(
                            event_id=event_id,
                            type=pb.EVENT_TYPE_PRODUCT_VIEW,
                            user_id=user,
                            item_id="85123A",
                            timestamp=_timestamp(datetime.now(UTC)),
                        )
                    ]
                )
                try:
                    await stub.RecordEvents(events, timeout=timeout_s)
                    code = "OK"
                    record.acknowledged.append(event_id)
                except grpc.aio.AioRpcError as error:
                    code = error.code().name
                record.answers.append(
                    Answer(sent - record.started, time.monotonic() - sent, "RecordEvents", code)
                )
                continue
            request = pb.RecommendRequest(user_id=user, num_items=10)
            try:
                reply = await stub.Recommend(request, timeout=timeout_s)
            except grpc.aio.AioRpcError as error:
                record.answers.append(
                    Answer(
                        sent - record.started,
                        time.monotonic() - sent,
                        "Recommend",
                        error.code().name,
                        ranked=False,
                        features=False,
                    )
                )
                continue
            reasons = set(reply.degraded_reasons)
            record.answers.append(
                Answer(
                    sent - record.started,
                    time.monotonic() - sent,
                    "Recommend",
                    "OK",
                    degraded=reply.degraded,
                    ranked=not (reasons & _UNRANKED),
                    features=pb.DEGRADED_REASON_FEATURES_UNAVAILABLE not in reasons,
                )
            )

    try:
        await asyncio.gather(*(caller(i) for i in range(callers)))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


def recovery_s(
    answers: Sequence[Answer], fault_s: float, until_s: float, *, ranked: bool = True
) -> float | None:
    """Seconds from `fault_s` until the first answer from which, over the `HEALTHY_SPAN_S` of
    Recommend answers started from it on, at most `RECOVERED_BAD_SHARE` are not whole; None
    when no such span fits before `until_s` (or before the last answer)."""
    window = sorted(
        (a for a in answers if a.method == "Recommend" and fault_s <= a.started_s < until_s),
        key=lambda a: a.started_s,
    )
    if not window:
        return None
    last = window[-1].started_s
    bad, end = 0, 0  # not-whole answers in window[i:end], the span starting at answer i
    for i, answer in enumerate(window):
        if answer.started_s + HEALTHY_SPAN_S > last:
            return None
        while end < len(window) and window[end].started_s < answer.started_s + HEALTHY_SPAN_S:
            bad += not window[end].whole(ranked)
            end += 1
        if bad <= RECOVERED_BAD_SHARE * (end - i):
            return round(answer.started_s - fault_s, 3)
        bad -= not answer.whole(ranked)
    return None


def summarise_fault(
    answers: Sequence[Answer],
    fault_s: float,
    until_s: float,
    *,
    back_s: float | None,
    ranked: bool = True,
) -> dict[str, Any]:
    """The figures of one fault. Failures count over every answer that came back in
    [fault_s, until_s) (a call sent just before a fault and failed by it belongs to that
    fault); the degraded shares and p99 over the fault itself: until answers recovered and the
    process served again (at least `HEALTHY_SPAN_S`; to `until_s` when it never recovered)."""
    window = [a for a in answers if fault_s <= a.started_s + a.latency_s < until_s]
    codes = Counter(a.code for a in window if a.code != "OK")
    recovered = recovery_s(answers, fault_s, until_s, ranked=ranked)
    lasted = (
        max(recovered, back_s or 0.0, HEALTHY_SPAN_S)
        if recovered is not None
        else until_s - fault_s
    )
    during = [a for a in window if a.started_s + a.latency_s < fault_s + lasted]
    recommends = [a for a in during if a.method == "Recommend" and a.code == "OK"]
    latencies = sorted(a.latency_s * 1000 for a in during if a.code == "OK")
    return {
        "answers": len(window),
        "non_ok": dict(codes),
        "non_ok_beyond_shedding": sum(n for code, n in codes.items() if code not in SHEDDING),
        "lasted_s": round(min(lasted, until_s - fault_s), 3),
        "degraded_share": (
            round(sum(a.degraded for a in recommends) / len(recommends), 4) if recommends else None
        ),
        "unranked_share": (
            round(sum(not a.ranked for a in recommends) / len(recommends), 4)
            if recommends
            else None
        ),
        "p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
        "recovery_s": recovered,
        "process_back_s": back_s,
    }


# ------------------------------------------------------------------ the supervised system


@dataclass
class Supervised:
    """A runner (infra/local/runner.py) serving `target`, its supervisord and its store."""

    profile: str
    target: str
    settings: Settings
    process: Process
    files: SupervisorFiles
    workdir: Path
    gateway_health: dict[str, str] = field(default_factory=dict)
    """Per gateway program: a URL answering 200 once it serves."""

    @contextlib.contextmanager
    def _rpc(self) -> Iterator[Any]:
        """supervisord's XML-RPC interface over its control socket (as supervisorctl uses)."""
        transport = SupervisorTransport(None, None, f"unix://{self.files.socket}")
        try:
            yield xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor
        finally:
            transport.close()

    def pid(self, program: str) -> int:
        """The running pid of a supervised program (0 when it is not running)."""
        with self._rpc() as rpc:
            return int(rpc.getProcessInfo(program)["pid"])

    def programs(self) -> list[str]:
        with self._rpc() as rpc:
            return [str(info["name"]) for info in rpc.getAllProcessInfo()]

    def ranks(self) -> bool:
        """Whether Triton runs here (built models): answers are then expected ranked by it."""
        return "triton" in self.programs()

    def kill(self, program: str) -> int:
        """SIGKILL the program's process (the fault); returns its pid."""
        pid = self.pid(program)
        if pid <= 0:
            raise RuntimeError(f"{program} is not running")
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        self.process.stop(timeout_s=90.0)


@contextlib.contextmanager
def supervised_system(
    workdir: Path,
    *,
    profile: str,
    processes: int = 2,
    startup_timeout_s: float = 240.0,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[Supervised]:
    """`make run` (`local`) or `make stack` (`stack`) as the runner starts them, on free ports
    (Triton's too), with every file under `workdir`."""
    workdir.chmod(0o755)  # Postgres runs as the postgres user when we are root
    config = STACK_CONFIG if profile == "stack" else LOCAL_CONFIG
    # nginx and gateways, metrics base + gateways + sidecar, Redis, Postgres, Prometheus, Triton.
    port = free_port_block((1 + processes) + (2 + processes) + 3 + 3)
    metrics_port = port + 1 + processes
    store_port = metrics_port + 2 + processes
    env = {
        "RECSYS__SERVING__PORT": str(port),
        "RECSYS__SERVING__PROCESSES": str(processes),
        "RECSYS__SERVING__RATE_LIMIT": "",
        "RECSYS__MONITORING__METRICS__PORT": str(metrics_port),
        "RECSYS__MODEL__RANKER__TRITON_GRPC_URL": f"127.0.0.1:{store_port + 4}",
        "RECSYS__FEATURE_STORE__EMBEDDED__EVENT_LOG_PATH": str(workdir / "events.sqlite3"),
        "RECSYS__AB_TESTING__EXPOSURE_LOG_PATH": str(workdir / "exposures.sqlite3"),
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    if profile == "stack":
        env["RECSYS__FEATURE_STORE__REDIS__URL"] = f"redis://127.0.0.1:{store_port}/0"
        env["RECSYS__FEATURE_STORE__POSTGRES__DSN"] = (
            f"postgresql://recsys@127.0.0.1:{store_port + 1}/recsys"
        )
    settings = load_settings(config, {**os.environ, **env})
    run_dir = workdir / "run"
    process = start_process(
        "runner",
        [
            sys.executable,
            "-m",
            "infra.local.runner",
            "--profile",
            profile,
            "--config",
            str(config),
            "--run-dir",
            str(run_dir),
            "--prometheus-port",
            str(store_port + 2),
        ],
        workdir / "logs",
        env,
        stop_signal=signal.SIGTERM,
    )
    system = Supervised(
        profile,
        f"127.0.0.1:{port}",
        settings,
        process,
        SupervisorFiles.under(run_dir),
        workdir,
    )
    try:
        metrics_ports = (
            profiles.stack_metrics_ports(settings)
            if profile == "stack"
            else profiles.local_metrics_ports(settings)
        )
        names = ["gateway"] if processes == 1 else [f"gateway{i + 1}" for i in range(processes)]
        system.gateway_health = {
            name: f"http://127.0.0.1:{metrics}/health"
            for name, metrics in zip(names, metrics_ports, strict=True)
        }
        for url in system.gateway_health.values():
            wait_for_http_health(url, startup_timeout_s, alive=process)
        wait_for_health(system.target, startup_timeout_s, alive=process)
        yield system
    finally:
        system.stop()


def triton_ready(system: Supervised) -> bool:
    url = f"http://127.0.0.1:{profiles.triton_ports(system.settings).http}/v2/health/ready"
    return http_ok(url, timeout_s=1.0)


# ------------------------------------------------------------------ acknowledged events lost


async def _stored_postgres(dsn: str, password: str | None, event_ids: Sequence[str]) -> int:
    connection = await asyncpg.connect(dsn, password=password, timeout=10)
    try:
        count = await connection.fetchval(
            "SELECT count(*) FROM events WHERE event_id = ANY($1::text[])", list(event_ids)
        )
        return int(count)
    finally:
        await connection.close()


def _stored_sqlite(path: Path, event_ids: Sequence[str]) -> int:
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as connection:
        connection.execute("CREATE TEMP TABLE wanted (event_id TEXT PRIMARY KEY)")
        connection.executemany("INSERT OR IGNORE INTO wanted VALUES (?)", [(e,) for e in event_ids])
        row = connection.execute(
            "SELECT count(*) FROM events JOIN wanted USING (event_id)"
        ).fetchone()
        return int(row[0])


def stored_events(system: Supervised, event_ids: Sequence[str]) -> int:
    """How many of `event_ids` the system's durable store holds."""
    store = system.settings.feature_store
    if store.backend == "redis_postgres":
        secret = store.postgres.password
        password = secret.get_secret_value() if secret is not None else None
        return asyncio.run(_stored_postgres(store.postgres.dsn, password, event_ids))
    return _stored_sqlite(store.embedded.event_log_path, event_ids)


def events_lost(system: Supervised, event_ids: Sequence[str], settle_s: float = 30.0) -> int:
    """Acknowledged events the store does not hold, once spooled ones had `settle_s` to be
    replayed (a spool retries every `feature_store.spool_replay_interval_s`)."""
    deadline = time.monotonic() + settle_s
    unique = sorted(set(event_ids))
    while True:
        missing = len(unique) - stored_events(system, unique)
        if missing == 0 or time.monotonic() > deadline:
            return missing
        time.sleep(1.0)


# ------------------------------------------------------------------ faults while traffic flows


@dataclass
class Fault:
    """One SIGKILL of a supervised program and how long it took to come back."""

    program: str
    at_s: float
    """When it was killed, seconds since the drive began."""
    pid: int
    back_s: float | None = None
    """Seconds until the program served again (gateway /health, Triton ready, new pid)."""


def _back(system: Supervised, program: str, old_pid: int) -> bool:
    if program == "triton":
        return triton_ready(system)
    if program in system.gateway_health:
        return http_ok(system.gateway_health[program], timeout_s=1.0)
    try:
        return system.pid(program) not in (0, old_pid)
    except (OSError, xmlrpc.client.Fault):
        return False


async def inject(
    system: Supervised, record: Drive, program: str, *, back_timeout_s: float
) -> Fault:
    """Kills `program` now and waits (at most `back_timeout_s`) until it serves again."""
    pid = await asyncio.to_thread(system.kill, program)
    fault = Fault(program, record.now_s(), pid)
    killed = time.monotonic()
    while time.monotonic() - killed < back_timeout_s:
        await asyncio.sleep(0.25)
        if await asyncio.to_thread(_back, system, program, pid):
            fault.back_s = round(time.monotonic() - killed, 3)
            break
    return fault


async def wait_until_whole(
    record: Drive, since_s: float, timeout_s: float, *, ranked: bool = True
) -> bool:
    """Waits until the answers since `since_s` have recovered (see `recovery_s`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if recovery_s(record.answers, since_s, record.now_s(), ranked=ranked) is not None:
            return True
        await asyncio.sleep(0.5)
    return False


def fault_report(
    record: Drive, faults: Sequence[Fault], end_s: float, *, ranked: bool = True
) -> list[dict[str, Any]]:
    """Per fault, its figures over the answers until the next fault (or `end_s`)."""
    out = []
    for fault, following in zip(faults, [*faults[1:], None], strict=True):
        until = following.at_s if following is not None else end_s
        out.append(
            {
                "program": fault.program,
                "at_s": round(fault.at_s, 3),
                **summarise_fault(
                    record.answers, fault.at_s, until, back_s=fault.back_s, ranked=ranked
                ),
            }
        )
    return out


def baseline_report(
    record: Drive, faults: Sequence[Fault], end_s: float, *, ranked: bool = True
) -> dict[str, Any]:
    """The figures before the first fault: what the faults are compared with."""
    first = faults[0].at_s if faults else end_s
    return summarise_fault(record.answers, 0.0, first, back_s=None, ranked=ranked)
