"""Start, watch and stop what the load scenarios measure.

- `local` (the `make run` profile): `python -m gateway.main` on a free port, and the real
  `tritonserver` (infra.local.tritonserver.TritonServer, free ports) when
  `build/triton/local` exists, the way infra/local/runner.py does; the gateway is pointed at that
  Triton through `RECSYS__MODEL__RANKER__TRITON_GRPC_URL`.
- `stack` (the `make stack` profile): `python -m infra.local.runner --profile stack` (nginx in front
  of several gateways, Triton when built), on free ports.
- `echo`: benchmarks/echo_server.py, the ceiling of a grpc.aio server doing no work.

Every process is started in a session of its own and stopped by its own id (SIGTERM, then
SIGKILL to that group). Event and exposure logs go to a private temporary folder so a run
never writes into `.run/`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from grpc_health.v1 import health_pb2_grpc

from benchmarks.harness.target import PLAINTEXT, Connection
from gateway.config import load_settings
from infra.local import profiles
from infra.local.health import grpc_serving, http_ok, poll_until
from infra.local.logs import log_tail
from infra.local.ports import free_port, free_port_block, free_ports
from infra.local.processes import stop_process_group
from infra.local.tritonserver import TritonServer, TritonServerOptions

REPO = Path(__file__).resolve().parents[2]
LOCAL_CONFIG = REPO / "infra" / "config" / "local.yaml"
STACK_CONFIG = REPO / "infra" / "config" / "stack.yaml"
TRITON_REPOSITORY = REPO / "build" / "triton" / "local"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class ProcessError(RuntimeError):
    """A process did not start or did not become healthy; the message holds its log tail."""


def wait_for_health(
    target: str,
    timeout_s: float,
    *,
    alive: Process | None = None,
    connection: Connection = PLAINTEXT,
) -> None:
    """Poll gRPC health (service "") until SERVING.

    Raises:
        ProcessError: timeout, or `alive` exited first.
    """
    with connection.channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            _check_alive(alive)
            return grpc_serving(stub, metadata=connection.call_metadata())

        if poll_until(serving, timeout_s, interval_s=0.25):
            return
    tail = alive.log_tail() if alive is not None else ""
    raise ProcessError(f"{target} did not report SERVING within {timeout_s:.0f} s\n{tail}")


def wait_for_http_health(url: str, timeout_s: float, *, alive: Process) -> None:
    """Poll a gateway's HTTP `/health` until 200: it reaches one process even when several
    share the gRPC port.

    Raises:
        ProcessError: timeout, or `alive` exited first.
    """

    def healthy() -> bool:
        _check_alive(alive)
        return http_ok(url, timeout_s=1.0)

    if not poll_until(healthy, timeout_s, interval_s=0.25):
        raise ProcessError(f"{url} did not answer 200 within {timeout_s:.0f} s\n{alive.log_tail()}")


def _check_alive(process: Process | None) -> None:
    if process is not None and not process.running():
        raise ProcessError(f"{process.name} exited before SERVING:\n{process.log_tail()}")


@dataclass
class Process:
    """One started process (its own session), its log file, and how to stop it."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] | None = None
    stop_signal: int = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """Signal the process, wait, then SIGKILL its process group (our session only)."""
        try:
            # Children left in the group (supervisord's, Triton's stubs) go too.
            return stop_process_group(self.popen, self.stop_signal, timeout_s)
        finally:
            if self.log_file is not None:
                self.log_file.close()
                self.log_file = None


def start_process(
    name: str,
    argv: list[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    stop_signal: int = signal.SIGTERM,
) -> Process:
    """Start `argv` in a new session with its output in `log_dir/<name>.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log_file = log_path.open("wb")
    popen = subprocess.Popen(
        argv,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Process(name, popen, log_path, log_file, stop_signal)


# ---------------------------------------------------------------- /proc: RSS, CPU, process tree


def rss_bytes(pid: int) -> int | None:
    """VmRSS of a process in bytes, None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Field 2 (comm) may hold spaces; everything after the last ')' is space-separated.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime: fields 14, 15


@dataclass(frozen=True)
class MachineCpu:
    """CPU time of the whole machine (all CPUs, seconds) and of this benchmark, at one moment."""

    busy_s: float
    """user + nice + system of every CPU (guest time is inside user)."""
    steal_s: float
    """Time the hypervisor ran another guest while this one wanted a CPU."""
    total_s: float
    """Every /proc/stat column: busy, idle, iowait, interrupts and steal."""
    bench_s: float
    """This driver's own CPU time plus that of its reaped children (the ghz runs)."""


def machine_cpu() -> MachineCpu:
    """/proc/stat's machine line and this process's resource usage, now."""
    fields = [
        int(v) / _CLK_TCK for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ]
    user, nice, system = fields[0], fields[1], fields[2]
    steal = fields[7] if len(fields) > 7 else 0.0
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return MachineCpu(
        busy_s=user + nice + system,
        steal_s=steal,
        total_s=sum(fields[:8]),  # guest columns 9-10 are already counted in user and nice
        bench_s=own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
    )


DISTURBED_STEAL_SHARE = 0.05
"""A run is marked disturbed when the hypervisor took more than 5% of the machine's CPU time ..."""
DISTURBED_OUTSIDE_CORES = 0.25
"""... or processes outside the benchmark used more than a quarter of a core."""


def disturbance(before: MachineCpu, after: MachineCpu, measured_cpu_s: float) -> dict[str, Any]:
    """What took CPU from the measured run: `steal_share` (of all CPU time) and
    `outside_cores` (busy time not spent by the measured processes, ghz or this driver, per
    second of wall time), and whether either passes its bound (`disturbed`). On a shared VM
    these tell a machine stall from a service stall."""
    total = after.total_s - before.total_s
    wall = total / (os.cpu_count() or 1)
    if total <= 0 or wall <= 0:
        return {"steal_share": None, "outside_cores": None, "disturbed": False}
    steal_share = (after.steal_s - before.steal_s) / total
    ours = measured_cpu_s + after.bench_s - before.bench_s
    outside = max(0.0, (after.busy_s - before.busy_s - ours) / wall)
    return {
        "steal_share": round(steal_share, 4),
        "outside_cores": round(outside, 3),
        "disturbed": steal_share > DISTURBED_STEAL_SHARE or outside > DISTURBED_OUTSIDE_CORES,
    }


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", errors="replace").strip()


def descendants(root: int) -> list[int]:
    """`root` and every process below it (by parent id), root first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return out


def tree_cpu_seconds(root: int) -> float:
    """CPU time so far of `root` and every process below it (those already gone excluded)."""
    return sum(cpu_seconds(pid) or 0.0 for pid in descendants(root))


def classify(command: str) -> str | None:
    """Role of a process from its command line (gateway, triton, nginx, redis, postgres,
    prometheus, sidecar, echo); None otherwise."""
    if "gateway.main" in command or "recsys-gateway" in command:
        return "gateway"
    if "tritonserver" in command.split(" ", 1)[0] or "triton_python_backend_stub" in command:
        return "triton"
    if command.startswith("nginx"):
        return "nginx"
    # The stack profile's stores and sidecars: measured with the system, not counted as
    # other load on the machine.
    program = command.split(" ", 1)[0].rsplit("/", 1)[-1]
    if program == "redis-server":
        return "redis"
    if program == "postgres" or command.startswith("postgres:"):
        return "postgres"
    if program == "prometheus":
        return "prometheus"
    if " -m ab sidecar" in command:
        return "sidecar"
    if "echo_server" in command:
        return "echo"
    return None


@dataclass(frozen=True)
class ProcessSample:
    """RSS and CPU time of one measured process at one moment."""

    pid: int
    role: str
    rss_bytes: int
    cpu_s: float


def summarise_errors(lines: Sequence[str], top: int = 10) -> dict[str, int]:
    """Count JSON log lines by message and the last line of their traceback (object
    addresses removed), most frequent first; lines that are not JSON count by their text."""
    counts: dict[str, int] = {}
    for line in lines:
        start = line.find("{")
        try:
            record = json.loads(line[start:]) if start >= 0 else None
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            last = str(record.get("exc_info") or "").strip().splitlines()[-1:] or [""]
            key = f"{record.get('logger', '')}: {record.get('message', '')} | {last[0]}"
        else:
            key = line
        key = re.sub(r" at 0x[0-9a-f]+", "", key)[:400]
        counts[key] = counts.get(key, 0) + 1
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return dict(ordered[:top])


# ---------------------------------------------------------------------------------- systems


@dataclass
class System:
    """What one scenario measures: a gRPC target and the processes behind it."""

    kind: str
    """local, stack or echo."""
    target: str
    roots: list[Process] = field(default_factory=list)
    triton: TritonServer | None = None
    triton_grpc_url: str | None = None
    ranker_model: str | None = None
    """The ranker Triton serves to the gateway (ensemble name), when there is one."""
    workdir: Path = Path(".")
    metrics_urls: list[str] = field(default_factory=list)
    """The gateways' Prometheus endpoints (for how many answers the fallback ranked)."""
    connection: Connection = PLAINTEXT
    """TLS and token of the calls to `target`."""

    @property
    def remote(self) -> bool:
        """A deployment we did not start: its processes cannot be sampled from here."""
        return self.kind == "external"

    def pids(self) -> list[tuple[int, str]]:
        """(pid, role) of every measured process now alive: gateways, Triton (+ stubs), nginx."""
        roots = [p.pid for p in self.roots if p.running()]
        if self.triton is not None and self.triton.pid is not None:
            roots.append(self.triton.pid)
        found: list[tuple[int, str]] = []
        seen: set[int] = set()
        for root in roots:
            for pid in descendants(root):
                if pid in seen:
                    continue
                seen.add(pid)
                role = classify(cmdline(pid))
                if role is not None:
                    found.append((pid, role))
        return found

    def sample(self) -> list[ProcessSample]:
        """RSS and CPU time of every measured process."""
        out = []
        for pid, role in self.pids():
            rss, cpu = rss_bytes(pid), cpu_seconds(pid)
            if rss is not None and cpu is not None:
                out.append(ProcessSample(pid, role, rss, cpu))
        return out

    def logged_errors(self, limit: int = 10_000) -> dict[str, int]:
        """ERROR / CRITICAL lines of the gateways' logs, summarised (see summarise_errors)."""
        found: list[str] = []
        for log in sorted((self.workdir / "logs").glob("*.log")):
            if not (log.stem == "stack" or log.stem.startswith("gateway")):
                continue
            with log.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    if '"level": "ERROR"' in line or '"level": "CRITICAL"' in line:
                        found.append(line.rstrip())
                        if len(found) >= limit:
                            break
        return summarise_errors(found)

    def stop(self) -> None:
        """Stop what we started; then SIGKILL any process we started indirectly (supervisord puts
        each child in a process group of its own) that outlived its parent, by pid and only while
        its command line is unchanged."""
        started = {
            pid: cmdline(pid)
            for root in self.roots
            if root.running()
            for pid in descendants(root.pid)[1:]
        }
        for process in reversed(self.roots):
            process.stop()
        if self.triton is not None:
            self.triton.stop()
        for pid, command in started.items():
            if command and cmdline(pid) == command:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def _common_env(
    workdir: Path, extra: Mapping[str, str], prediction_cache: bool = False
) -> dict[str, str]:
    env = {
        "RECSYS__FEATURE_STORE__EMBEDDED__EVENT_LOG_PATH": str(workdir / "events.sqlite3"),
        "RECSYS__AB_TESTING__EXPOSURE_LOG_PATH": str(workdir / "exposures.sqlite3"),
        "PYTHONUNBUFFERED": "1",
    }
    if not prediction_cache:
        # Every request does all its work (the load targets' condition): ghz cycles through a
        # few thousand requests, so the prediction cache would answer most of them instead,
        # and the retrieval cache would skip their candidate search.
        env["RECSYS__MODEL__RANKER__PREDICTION_CACHE_SIZE"] = "0"
        env["RECSYS__MODEL__CANDIDATE_GENERATOR__RETRIEVAL_CACHE_SIZE"] = "0"
    return {**env, **extra}


def _ranker_ensemble(repository: Path) -> str | None:
    for name in ("ranker_v2", "ranker_v3"):
        if (repository / name / "config.pbtxt").is_file():
            return name
    return None


@contextlib.contextmanager
def local_system(
    workdir: Path,
    *,
    config: Path = LOCAL_CONFIG,
    triton_repository: Path = TRITON_REPOSITORY,
    rate_limit: str = "",
    extra_env: Mapping[str, str] | None = None,
    prediction_cache: bool = False,
    startup_timeout_s: float = 180.0,
    processes: int = 1,
) -> Iterator[System]:
    """The `make run` profile: Triton (when built) and `processes` gateways, on free ports.

    Several gateways share one port as `make run` starts them (`serving.reuse_port`, each
    with its own metrics port); the kernel spreads connections, not calls, over them, so a
    load generator needs several connections to reach them all. `rate_limit` overrides
    `serving.rate_limit`; empty disables the per-client limit, which would otherwise throttle
    ghz (one client address) in the spike. The prediction and retrieval caches are off
    unless `prediction_cache`, so every request searches its candidates and reaches Triton.
    """
    env = _common_env(workdir, extra_env or {}, prediction_cache)
    env["RECSYS__SERVING__RATE_LIMIT"] = rate_limit
    port, *metrics_ports = free_ports(1 + processes)
    env["RECSYS__SERVING__PORT"] = str(port)
    if processes > 1:
        env["RECSYS__SERVING__REUSE_PORT"] = "true"
    system = System(
        kind="local",
        target=f"127.0.0.1:{port}",
        workdir=workdir,
        metrics_urls=[f"http://127.0.0.1:{m}/metrics" for m in metrics_ports],
    )
    try:
        if triton_repository.is_dir():
            options = TritonServerOptions(model_repository=triton_repository).with_free_ports()
            system.triton = TritonServer(options, log_path=workdir / "logs" / "triton.log")
            system.triton.start()
            system.triton_grpc_url = system.triton.grpc_url
            system.ranker_model = _ranker_ensemble(triton_repository)
            env["RECSYS__MODEL__RANKER__TRITON_GRPC_URL"] = system.triton.grpc_url
            env["RECSYS__MODEL__RANKER__TRITON_HTTP_URL"] = system.triton.http_url
        for i, metrics_port in enumerate(metrics_ports):
            gateway = start_process(
                "gateway" if processes == 1 else f"gateway{i + 1}",
                [sys.executable, "-m", "gateway.main", "--config", str(config)],
                workdir / "logs",
                {**env, "RECSYS__MONITORING__METRICS__PORT": str(metrics_port)},
            )
            system.roots.append(gateway)
            wait_for_http_health(
                f"http://127.0.0.1:{metrics_port}/health", startup_timeout_s, alive=gateway
            )
        wait_for_health(system.target, startup_timeout_s, alive=system.roots[0])
        yield system
    finally:
        system.stop()


@contextlib.contextmanager
def stack_system(
    workdir: Path,
    *,
    config: Path = STACK_CONFIG,
    processes: int | None = None,
    rate_limit: str = "",
    prediction_cache: bool = False,
    startup_timeout_s: float = 240.0,
) -> Iterator[System]:
    """The `make stack` profile (nginx + gateways + Triton when built) on free ports.

    The runner puts gateways on the ports after nginx's and metrics on the ports after the
    metrics port, so both bases come from one block of free ports. Triton keeps the ports the
    config gives it (8000-8002 by default).
    """
    if processes is None:
        processes = load_settings(config, {}).serving.processes
    # Postgres runs as the postgres user when we are root: it must be able to enter the folder.
    workdir.chmod(0o755)
    env = _common_env(workdir, {}, prediction_cache)
    env["RECSYS__SERVING__RATE_LIMIT"] = rate_limit
    # One free block: nginx and the gateways, then the metrics base, the gateways' and the
    # sidecar's metrics ports (the runner puts the sidecar's after the gateways').
    port = free_port_block((1 + processes) + (2 + processes))
    metrics_port = port + 1 + processes
    env["RECSYS__SERVING__PORT"] = str(port)
    env["RECSYS__MONITORING__METRICS__PORT"] = str(metrics_port)
    env["RECSYS__SERVING__PROCESSES"] = str(processes)
    # The runner's own settings, so its port layout is read from it, not repeated here.
    settings = load_settings(config, {**os.environ, **env})
    system = System(
        kind="stack",
        target=f"127.0.0.1:{port}",
        workdir=workdir,
        metrics_urls=[
            f"http://127.0.0.1:{metrics}/metrics"
            for metrics in profiles.stack_metrics_ports(settings)
        ],
    )
    try:
        stack = start_process(
            "stack",
            [
                sys.executable,
                "-m",
                "infra.local.runner",
                "--profile",
                "stack",
                "--config",
                str(config),
                "--run-dir",
                str(workdir / "stack"),
            ],
            workdir / "logs",
            env,
            stop_signal=signal.SIGINT,  # the runner has supervisord stop every process
        )
        system.roots.append(stack)
        if TRITON_REPOSITORY.is_dir():
            system.triton_grpc_url = f"127.0.0.1:{profiles.triton_ports(settings).grpc}"
            system.ranker_model = _ranker_ensemble(TRITON_REPOSITORY)
        # nginx reports SERVING once one gateway does: wait for every gateway behind it too.
        for gateway_port in profiles.stack_gateway_ports(settings):
            wait_for_health(f"127.0.0.1:{gateway_port}", startup_timeout_s, alive=stack)
        wait_for_health(system.target, startup_timeout_s, alive=stack)
        yield system
    finally:
        system.stop()


@contextlib.contextmanager
def external_system(
    target: str, connection: Connection, workdir: Path, timeout_s: float = 30.0
) -> Iterator[System]:
    """A running deployment at `target` (`--target`): waited for until its health check says
    SERVING; nothing is started or stopped, and no process of it is sampled."""
    system = System(kind="external", target=target, workdir=workdir, connection=connection)
    wait_for_health(target, timeout_s, connection=connection)
    yield system


@contextlib.contextmanager
def echo_system(workdir: Path, response_file: Path | None) -> Iterator[System]:
    """benchmarks/echo_server.py on a free port, answering with `response_file`'s bytes."""
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.echo_server", "--port", str(port)]
    if response_file is not None:
        argv += ["--response-file", str(response_file)]
    system = System(kind="echo", target=f"127.0.0.1:{port}", workdir=workdir)
    try:
        echo = start_process("echo", argv, workdir / "logs", {"PYTHONUNBUFFERED": "1"})
        system.roots.append(echo)
        wait_for_health(system.target, 60.0, alive=echo)
        yield system
    finally:
        system.stop()
