"""`make run` and `make stack`: the local profiles under supervisord (infra/local/supervision.py).

    python -m infra.local.runner [--profile local|stack] [--config FILE] [--run-dir DIR]

- `local` (`make run`): Triton (the `tritonserver` binary of the nvidia-pytriton wheel) when a
  local model repository has been built, then `serving.processes` gateways (one per core by
  default), all on `serving.port`: they bind it with SO_REUSEPORT and the kernel spreads
  connections over them, no proxy in between. With several, their metrics and health
  endpoints are on the ports after `monitoring.metrics.port`; they share the event log and
  the exposure log, and each follows the events the others store
  (feature_service/event_tail.py). Triton's gRPC port is the one in
  `model.ranker.triton_grpc_url` (8001), its HTTP port the one below and its metrics port the
  one above. With experiments configured, the experiment sidecar (`python -m ab sidecar`)
  evaluates them from the gateways' SQLite logs and writes the decisions their routing
  follows; its metrics are on the port after the last gateway's.
- `stack` (`make stack`, `infra/config/stack.yaml`): nginx on `serving.port` load-balancing
  gRPC over `serving.processes` gateway processes on the following ports (metrics on the
  ports after `monitoring.metrics.port`, then the experiment sidecar's), Redis and Postgres
  where `feature_store` points, Prometheus (scraping those ports) and Triton when built.

Both wait until gRPC health reports SERVING on `serving.port` (first on every gateway: behind
nginx in `stack`, through its HTTP /health in `local`) and print how to call the service. A
process that dies is restarted (with backoff while it keeps dying at start) and the others keep
serving; Ctrl-C or SIGTERM on the runner stops everything cleanly, in the reverse start order.
When supervisord gives up on a process (FATAL, after `startretries` failed starts in a row, about
eight minutes of growing waits), the runner reports it (its last exit and the end of its log)
and, after a pause (`--fatal-retry-after`, 300 s), has supervisord start it again, at most
`--fatal-retry-rounds` (5) times in a row, so a part whose cause was fixed meanwhile comes back;
the others keep serving throughout. Each process's output is echoed as `name | line` and kept in
`<run-dir>/logs/<name>.log`. supervisord's configuration, log and control socket are in the run
folder (`--run-dir`): `python -m supervisor.supervisorctl -c <run-dir>/supervisord.conf status`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from types import FrameType

from gateway.config import ConfigError, load_settings
from infra.local import supervision
from infra.local.call_examples import call_examples, connect_target, find_grpcurl
from infra.local.health import wait_until_http_ok, wait_until_serving
from infra.local.ports import ensure_port_free
from infra.local.profiles import (
    local_metrics_ports,
    local_processes,
    stack_gateway_ports,
    stack_processes,
    triton_ports,
)

READY_TIMEOUT_S = 180.0
_PROG = "python -m infra.local.runner"


def _announce(
    target: str,
    backends: list[str],
    triton_ready_url: str | None,
    stopped: threading.Event,
    health_urls: Sequence[str] = (),
) -> None:
    """Announces SERVING once every gateway reports it: on its HTTP /health in `health_urls`
    (gateways sharing `target`'s port), on its gRPC address in `backends` (gateways behind
    nginx), then `target` itself."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    for url in health_urls:
        if not wait_until_http_ok(url, max(deadline - time.monotonic(), 0.0), stopped):
            if not stopped.is_set():
                print(
                    f"\n  a gateway did not report SERVING on {url} within "
                    f"{READY_TIMEOUT_S:.0f} s; see the log above.\n",
                    flush=True,
                )
            return
    for address in [*backends, target]:
        if not wait_until_serving(address, max(deadline - time.monotonic(), 0.0), stopped):
            if not stopped.is_set():
                print(
                    f"\n  recsys did not report SERVING on {address} within "
                    f"{READY_TIMEOUT_S:.0f} s; see the log above.\n",
                    flush=True,
                )
            return
    triton_ready = triton_ready_url is not None and wait_until_http_ok(
        triton_ready_url, 1.0, stopped
    )
    if triton_ready_url is None:
        ranking = "  No model repository (make models): answers come from the popularity ranking.\n"
    elif triton_ready:
        ranking = "  Answers are ranked by Triton.\n"
    else:
        ranking = (
            "  Triton is still loading its models: until it is ready, answers come from the\n"
            "  popularity fallback (flagged in degraded_reasons).\n"
        )
    # Commands whose tool exists here: grpcurl when `make tools` built it, else the Python client.
    grpcurl = find_grpcurl(Path.cwd() / ".tools" / "bin")
    examples = call_examples(connect_target(target), grpcurl, sys.executable)
    print(
        f"\n  recsys is SERVING on {target}. From another shell:\n"
        + "".join(f"    {line}\n" for line in examples)
        + ranking
        + "  Ctrl-C stops everything.\n",
        flush=True,
    )
    if triton_ready_url is None or triton_ready:
        return
    if wait_until_http_ok(triton_ready_url, READY_TIMEOUT_S, stopped):
        print("\n  Triton is ready: answers are ranked by the trained models.\n", flush=True)
    elif not stopped.is_set():
        print(
            f"\n  Triton was not ready within {READY_TIMEOUT_S:.0f} s; answers still come from "
            "the popularity fallback. See the triton lines of the log above.\n",
            flush=True,
        )


def _report(message: str) -> None:
    """A process supervisord gave up on (and what becomes of it), set apart from the log lines."""
    print(f"\n  {_PROG}: {message}\n", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=_PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('recsys')}")
    parser.add_argument("--config", type=Path, default=Path("infra/config/local.yaml"))
    parser.add_argument("--profile", choices=("local", "stack"), default="local")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="where supervisord's files (and the stack's configs, data and logs) go;"
        " .run/<profile> by default",
    )
    parser.add_argument(
        "--prometheus-port", type=int, default=9090, help="Prometheus' port in the stack profile"
    )
    parser.add_argument(
        "--fatal-retry-after",
        type=float,
        default=supervision.DEFAULT_RETRY.after_s,
        metavar="SECONDS",
        help="pause before a process supervisord gave up on is started again"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--fatal-retry-rounds",
        type=int,
        default=supervision.DEFAULT_RETRY.rounds,
        metavar="N",
        help="times in a row such a process is started again before it is left stopped"
        " (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    run_dir = (args.run_dir or Path(".run") / args.profile).resolve()
    try:
        settings = load_settings(args.config, os.environ)
        if args.profile == "stack":
            processes = stack_processes(settings, args.config, run_dir, args.prometheus_port)
        else:
            processes = local_processes(settings, args.config)
    except ConfigError as exc:
        sys.exit(f"{_PROG}: {exc}")
    serving = settings.serving
    if args.profile == "local" and serving.port != 0:
        try:
            ensure_port_free(serving.host, serving.port)
        except OSError as exc:
            sys.exit(
                f"{_PROG}: {serving.host}:{serving.port} is taken ({exc.strerror}); is an "
                "earlier `make run` still running? Stop it, or set serving.port "
                "(RECSYS__SERVING__PORT)."
            )
    files = supervision.write_config(processes, run_dir, Path.cwd())
    # Started before any thread of ours, so the fork happens while the runner is single-threaded.
    supervisor = subprocess.Popen(supervision.supervisord_argv(files))
    signalled: list[int] = []
    stopped = threading.Event()
    stopping = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        # supervisord stops every program, highest priority first, then exits. Ctrl-C in a
        # terminal reaches it directly as well (same process group): a second stop is harmless.
        signalled.append(signum)
        stopping.set()  # nothing is started again from now on
        supervisor.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    echo = threading.Thread(
        target=supervision.echo_logs,
        args=(files, list(processes), stopped, sys.stdout),
        daemon=True,
    )
    echo.start()
    threading.Thread(
        target=supervision.watch_programs,
        args=(
            files,
            stopping,
            _report,
            supervision.FatalRetry(args.fatal_retry_after, args.fatal_retry_rounds),
        ),
        daemon=True,
    ).start()
    target = f"{settings.serving.host}:{settings.serving.port}"
    # nginx reports SERVING as soon as one gateway behind it does; the stack is ready only
    # when every gateway is.
    backends = (
        [f"127.0.0.1:{port}" for port in stack_gateway_ports(settings)]
        if args.profile == "stack"
        else []
    )
    # Gateways sharing the port: a health check reaches one of them, so each is asked on its
    # own HTTP port (when it has a known one).
    metrics = settings.monitoring.metrics
    health_urls = (
        [f"http://{metrics.host}:{port}/health" for port in local_metrics_ports(settings)]
        if args.profile == "local" and serving.processes > 1 and metrics.enabled and metrics.port
        else []
    )
    triton_ready_url = (
        f"http://127.0.0.1:{triton_ports(settings).http}/v2/health/ready"
        if "triton" in processes
        else None
    )
    threading.Thread(
        target=_announce,
        args=(target, backends, triton_ready_url, stopped, health_urls),
        daemon=True,
    ).start()
    try:
        returncode = supervisor.wait()
    finally:
        stopping.set()
        stopped.set()
        echo.join(timeout=10)  # the last lines the processes wrote while stopping
    # Stopped on a signal: 128 + its number, as a shell reports it. supervisord exiting by
    # itself (a bad configuration, its socket taken) is a failure whatever its status.
    sys.exit(128 + signalled[0] if signalled else returncode or 1)


if __name__ == "__main__":
    main()
