"""Run ghz against a gRPC method and parse its JSON report.

ghz (https://ghz.sh, `github.com/bojand/ghz`) is a Go load generator. Facts this module relies
on, from the v0.120.0 sources and docs (`runner/reporter.go`, `www/docs/options.md`):

- `--data-file` with a JSON *array* makes unary calls use the messages round-robin.
- `--format json` writes one object: `count`, `total`/`average`/`fastest`/`slowest` as Go
  durations (integer nanoseconds), `rps`, `errorDistribution`, `statusCodeDistribution`,
  `latencyDistribution` (percentages 10..99, OK responses only) and `details`: one entry per
  call with `timestamp` (RFC 3339), `latency` (ns), `error` and `status`.
- `--rps R` paces ticks at R per second; without `--async` each of the `-c` workers waits for
  its call to finish (closed loop: a slow server lowers the offered rate), with `--async` every
  tick starts a call at once (open loop: the offered rate holds while the server falls behind).
- `-z` stops after a duration; `--duration-stop=wait` lets in-flight calls finish and counts
  them instead of failing them with "transport is closing".
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
GHZ_MODULE = "github.com/bojand/ghz/cmd/ghz"
GHZ_VERSION = "v0.120.0"
"""The version `make bench` installs (Makefile: GHZ)."""
RECOMMEND_CALL = "recsys.v1.RecommendationService/Recommend"
PROTO = REPO / "protos" / "recsys" / "v1" / "recommendation.proto"
IMPORT_PATHS = (REPO / "protos",)
_NS = 1e-9


class GhzError(RuntimeError):
    """ghz is missing, failed, or wrote something that is not its JSON report."""


def find_ghz() -> Path:
    """The ghz binary: the project's `.tools/bin/ghz` first, then PATH.

    Raises:
        GhzError: not installed; the message says how to install it.
    """
    local = REPO / ".tools" / "bin" / "ghz"
    if local.is_file():
        return local
    found = shutil.which("ghz")
    if found:
        return Path(found)
    raise GhzError(
        "ghz is not installed; `make bench` installs it, or run "
        f"`GOBIN=$PWD/.tools/bin go install {GHZ_MODULE}@{GHZ_VERSION}`"
    )


def ghz_version(binary: Path) -> str:
    """ghz's version: `--version`, or the module version Go stamped into the binary.

    `go install` without ldflags leaves `--version` saying "dev"; `go version -m` still knows
    the module version.
    """
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except OSError:
        out = ""
    if out and out != "dev":
        return out
    go = shutil.which("go")
    if go:
        try:
            info = subprocess.run(
                [go, "version", "-m", str(binary)],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout
        except OSError:
            info = ""
        for line in info.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "mod" and parts[1] == "github.com/bojand/ghz":
                return parts[2]
    return out or "unknown"


@dataclass(frozen=True)
class GhzRun:
    """One ghz invocation: the load shape and where it goes."""

    target: str
    """host:port of the server."""
    data_file: Path
    """JSON array of request messages, used round-robin."""
    duration_s: float
    """How long to send (`-z`)."""
    concurrency: int = 8
    """Workers (`-c`)."""
    rps: int | None = None
    """Target rate (`--rps`); None for as fast as the workers go."""
    open_loop: bool = False
    """`--async`: start a call at every tick without waiting for earlier ones (needs `rps`)."""
    connections: int = 1
    """gRPC connections shared by the workers (`--connections`)."""
    timeout_s: float = 2.0
    """Per-call timeout (`-t`); a call slower than this counts as DEADLINE_EXCEEDED."""
    call: str = RECOMMEND_CALL
    proto: Path = PROTO
    import_paths: tuple[Path, ...] = IMPORT_PATHS
    name: str = ""
    cpus: int | None = None
    """`--cpus` for ghz's Go runtime; None leaves ghz's default (all cores)."""
    protoset: Path | None = None
    """A compiled FileDescriptorSet (`--protoset`) instead of `proto` + `import_paths`."""
    binary_file: Path | None = None
    """One serialized request message (`--binary-file`) instead of the JSON `data_file`."""
    transport: tuple[str, ...] = ("--insecure",)
    """ghz's TLS and metadata options (benchmarks.harness.target.Connection.ghz_args)."""

    def __post_init__(self) -> None:
        if self.open_loop and not self.rps:
            raise ValueError("an open-loop run needs a target rate (rps)")
        if self.connections > self.concurrency:
            raise ValueError("ghz refuses more connections than workers")


def ghz_argv(binary: Path, run: GhzRun, output: Path) -> list[str]:
    """The ghz command line for `run`, writing its JSON report to `output`."""
    if run.protoset is not None:
        schema = [f"--protoset={run.protoset}"]
    else:
        schema = [f"--proto={run.proto}", *(f"--import-paths={p}" for p in run.import_paths)]
    if run.binary_file is not None:
        data = f"--binary-file={run.binary_file}"
    else:
        data = f"--data-file={run.data_file}"
    argv = [
        str(binary),
        *run.transport,
        *schema,
        f"--call={run.call}",
        data,
        f"--concurrency={run.concurrency}",
        f"--connections={run.connections}",
        f"--duration={_go_duration(run.duration_s)}",
        "--duration-stop=wait",
        f"--timeout={_go_duration(run.timeout_s)}",
        # Our data has no {{...}} templates; skipping template processing saves ghz CPU.
        "--disable-template-data",
        "--format=json",
        f"--output={output}",
    ]
    if run.rps:
        argv.append(f"--rps={run.rps}")
    if run.open_loop:
        argv.append("--async")
    if run.name:
        argv.append(f"--name={run.name}")
    if run.cpus:
        argv.append(f"--cpus={run.cpus}")
    argv.append(run.target)
    return argv


def _go_duration(seconds: float) -> str:
    millis = max(1, round(seconds * 1000))
    return f"{millis}ms"


@dataclass(frozen=True)
class LatencySummary:
    """Latency figures of OK calls, in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @staticmethod
    def of(latencies_ms: Sequence[float]) -> LatencySummary:
        """Summary of a sample (all zeros when it is empty)."""
        if not latencies_ms:
            return LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        ordered = sorted(latencies_ms)
        return LatencySummary(
            count=len(ordered),
            mean_ms=sum(ordered) / len(ordered),
            p50_ms=percentile(ordered, 50),
            p95_ms=percentile(ordered, 95),
            p99_ms=percentile(ordered, 99),
            p999_ms=percentile(ordered, 99.9),
            max_ms=ordered[-1],
        )


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sample (the convention ghz uses too)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


@dataclass(frozen=True)
class Interval:
    """Calls that *started* in one time bucket of a run."""

    start_s: float
    """Bucket start, seconds since the first call of the run."""
    count: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class GhzResult:
    """The figures of one ghz run."""

    name: str
    count: int
    """All calls, OK or not."""
    ok: int
    errors: int
    duration_s: float
    """ghz's `total`: wall time of the run."""
    rps: float
    """Completed calls per second, errors included (ghz's own figure)."""
    ok_rps: float
    """OK calls per second."""
    latency: LatencySummary
    status_codes: Mapping[str, int]
    error_messages: Mapping[str, int]
    end_reason: str
    options: Mapping[str, Any] = field(default_factory=dict)
    intervals: tuple[Interval, ...] = ()

    def as_dict(self, *, with_intervals: bool = True) -> dict[str, Any]:
        """JSON-ready form, latencies in ms."""
        out: dict[str, Any] = {
            "name": self.name,
            "count": self.count,
            "ok": self.ok,
            "errors": self.errors,
            "duration_s": round(self.duration_s, 3),
            "rps": round(self.rps, 1),
            "ok_rps": round(self.ok_rps, 1),
            "latency_ms": {
                k: round(v, 3) for k, v in dataclasses.asdict(self.latency).items() if k != "count"
            },
            "status_codes": dict(self.status_codes),
            "error_messages": _top(self.error_messages, 10),
            "end_reason": self.end_reason,
            "options": {k: self.options[k] for k in _KEPT_OPTIONS if k in self.options},
        }
        if with_intervals and self.intervals:
            out["intervals"] = [dataclasses.asdict(i) for i in self.intervals]
        return out


_KEPT_OPTIONS = ("concurrency", "connections", "rps", "async", "duration", "timeout", "CPUs")


def _top(messages: Mapping[str, int], n: int) -> dict[str, int]:
    ordered = sorted(messages.items(), key=lambda item: (-item[1], item[0]))
    return {message[:300]: count for message, count in ordered[:n]}


def _parse_timestamp(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp with up to nanosecond digits."""
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python parses at most 6 fractional digits; ghz writes up to 9.
    head, sep, rest = text.partition(".")
    if sep:
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    return datetime.fromisoformat(text).timestamp()


def parse_report(report: Mapping[str, Any], *, interval_s: float = 1.0) -> GhzResult:
    """Figures of a ghz JSON report.

    Percentiles come from `details` (every call) when present, else from ghz's
    `latencyDistribution`; latencies are of OK calls only, like ghz's own summary.

    Raises:
        GhzError: the object is not a ghz report.
    """
    if "count" not in report or "statusCodeDistribution" not in report:
        raise GhzError("not a ghz JSON report (no count / statusCodeDistribution)")
    status_codes = {str(k): int(v) for k, v in (report.get("statusCodeDistribution") or {}).items()}
    count = int(report["count"])
    ok = status_codes.get("OK", 0)
    errors = count - ok
    duration_s = float(report.get("total", 0)) * _NS
    details = report.get("details") or []
    ok_latencies = [float(d["latency"]) * _NS * 1e3 for d in details if d.get("status") == "OK"]
    if ok_latencies:
        latency = LatencySummary.of(ok_latencies)
    else:
        latency = _summary_from_distribution(report, ok)
    intervals = _intervals(details, interval_s) if details else ()
    return GhzResult(
        name=str(report.get("name", "")),
        count=count,
        ok=ok,
        errors=errors,
        duration_s=duration_s,
        rps=float(report.get("rps", 0.0)),
        ok_rps=ok / duration_s if duration_s > 0 else 0.0,
        latency=latency,
        status_codes=status_codes,
        error_messages={str(k): int(v) for k, v in (report.get("errorDistribution") or {}).items()},
        end_reason=str(report.get("endReason", "")),
        options=dict(report.get("options") or {}),
        intervals=intervals,
    )


def _summary_from_distribution(report: Mapping[str, Any], ok: int) -> LatencySummary:
    by_pct = {
        int(entry["percentage"]): float(entry["latency"]) * _NS * 1e3
        for entry in report.get("latencyDistribution") or []
    }
    slowest = float(report.get("slowest", 0)) * _NS * 1e3
    return LatencySummary(
        count=ok,
        mean_ms=float(report.get("average", 0)) * _NS * 1e3,
        p50_ms=by_pct.get(50, 0.0),
        p95_ms=by_pct.get(95, 0.0),
        p99_ms=by_pct.get(99, 0.0),
        p999_ms=slowest,  # ghz reports no 99.9th percentile; the maximum bounds it
        max_ms=slowest,
    )


def _intervals(details: Sequence[Mapping[str, Any]], interval_s: float) -> tuple[Interval, ...]:
    """Per-bucket figures by call start time (timestamp is the call's start)."""
    stamped = [
        (_parse_timestamp(str(d["timestamp"])), float(d["latency"]) * _NS * 1e3, d.get("status"))
        for d in details
    ]
    if not stamped:
        return ()
    origin = min(t for t, _, _ in stamped)
    buckets: dict[int, list[tuple[float, bool]]] = {}
    for t, latency_ms, status in stamped:
        buckets.setdefault(int((t - origin) // interval_s), []).append((latency_ms, status == "OK"))
    out = []
    for index in sorted(buckets):
        calls = buckets[index]
        ok_sorted = sorted(lat for lat, ok in calls if ok)
        out.append(
            Interval(
                start_s=round(index * interval_s, 3),
                count=len(calls),
                errors=sum(1 for _, ok in calls if not ok),
                p50_ms=round(percentile(ok_sorted, 50), 3),
                p99_ms=round(percentile(ok_sorted, 99), 3),
                max_ms=round(ok_sorted[-1], 3) if ok_sorted else 0.0,
            )
        )
    return tuple(out)


def run_ghz(binary: Path, run: GhzRun, workdir: Path, *, interval_s: float = 1.0) -> GhzResult:
    """Run ghz once and parse its report (kept as `workdir/<name>.ghz.json` only on failure).

    Raises:
        GhzError: ghz exited with an error and wrote no report.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    stem = run.name or "ghz"
    output = workdir / f"{stem}.ghz.json"
    argv = ghz_argv(binary, run, output)
    # ghz exits 0 even when calls fail; a non-zero code means it could not run at all.
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=run.duration_s + run.timeout_s + 120
    )
    if completed.returncode != 0 or not output.is_file():
        raise GhzError(
            f"ghz failed (exit {completed.returncode}): {completed.stderr.strip()[-2000:]}\n"
            f"command: {' '.join(argv)}"
        )
    try:
        report = json.loads(output.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GhzError(f"ghz wrote invalid JSON to {output}: {exc}") from exc
    result = parse_report(report, interval_s=interval_s)
    output.unlink()  # up to ~100 bytes per call: the parsed figures are what we keep
    return result
