"""Reports of a load run: machine, versions, settings, figures, target checks; JSON + Markdown.

A report is one JSON object (`kind: recsys-load-report`) written to
`benchmarks/results/load-<UTC time>-<label>.json`, with a Markdown summary beside it; both are
written whole or not at all (temporary name, then rename).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness.procs import DISTURBED_OUTSIDE_CORES, DISTURBED_STEAL_SHARE

REPORT_KIND = "recsys-load-report"
SCHEMA_VERSION = 1
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"

# Targets of issue #9 (2-core machine, ghz on the same machine).
TARGET_SUSTAINED_RPS = 1_000
TARGET_SUSTAINED_P99_MS = 50
AMBITION_RPS = 2_000
AMBITION_P99_MS = 25
TARGET_TRITON_RATIO = 0.40
TARGET_BATCHING_GAIN = 2.0
TARGET_SOAK_P99_DRIFT = 0.20
TARGET_SOAK_RSS_GROWTH = 0.05
TARGET_GATEWAY_RSS_MB = 400.0


def machine_description() -> dict[str, Any]:
    """CPU count and model, memory, kernel and load at the time of the run."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total_mb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_mb = round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_mb": mem_total_mb,
        "platform": platform.platform(),
        "hostname": platform.node(),
        "load_average_at_start": [round(x, 2) for x in load],
    }


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(ghz: str | None, tritonserver: str | None) -> dict[str, Any]:
    """Versions of what the figures depend on."""
    return {
        "python": sys.version.split()[0],
        "grpcio": package_version("grpcio"),
        "protobuf": package_version("protobuf"),
        "uvloop": package_version("uvloop"),
        "tritonclient": package_version("tritonclient"),
        "nvidia_pytriton": package_version("nvidia-pytriton"),
        "onnxruntime": package_version("onnxruntime"),
        "numpy": package_version("numpy"),
        "ghz": ghz,
        "tritonserver": tritonserver,
    }


@dataclass(frozen=True)
class TargetCheck:
    """One target of the issue against what was measured."""

    name: str
    target: str
    measured: str
    met: bool | None
    """None: not measured in this run."""
    gap: str
    """By how much a missed target was missed; empty when met or not measured."""


def _at_least(
    name: str,
    target_text: str,
    measured: float | None,
    goal: float,
    unit: str,
    measured_text: str | None = None,
) -> TargetCheck:
    """`measured_text` replaces the formatted value in the table (the gap still uses it)."""
    if measured is None:
        return TargetCheck(name, target_text, "not measured", None, "")
    unit_s = f" {unit}" if unit else ""
    met = measured >= goal
    gap = ""
    if not met:
        short = goal - measured
        gap = f"short by {short:,.2f}{unit_s} ({short / goal:.0%} below target)"
    shown = f"{measured:,.2f}{unit_s}" if measured_text is None else measured_text
    return TargetCheck(name, target_text, shown, met, gap)


def _at_most(
    name: str, target_text: str, measured: float | None, limit: float, unit: str
) -> TargetCheck:
    if measured is None:
        return TargetCheck(name, target_text, "not measured", None, "")
    unit_s = f" {unit}" if unit else ""
    met = measured < limit
    gap = "" if met else f"over by {measured - limit:,.3g}{unit_s}"
    return TargetCheck(name, target_text, f"{measured:,.3g}{unit_s}", met, gap)


def _get(data: Mapping[str, Any], *path: str) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def evaluate_targets(scenarios: Mapping[str, Any]) -> list[TargetCheck]:
    """Check the issue's targets against the scenario figures present in a report."""

    def sustained(name: str, goal: int, bound: int) -> TargetCheck:
        target_text = f">= {goal:,}/s with p99 < {bound} ms, no errors"
        value = _get(scenarios, "rate_search", "sustainable_rps", f"p99_lt_{bound}ms")
        if value is None and "rate_search" in scenarios:
            # The search ran and no rate it tried met the bound: a miss by the whole goal.
            return _at_least(name, target_text, 0.0, goal, "req/s", "none of the rates tried")
        return _at_least(name, target_text, None if value is None else float(value), goal, "req/s")

    checks = [
        sustained("sustained rate", TARGET_SUSTAINED_RPS, TARGET_SUSTAINED_P99_MS),
        sustained("ambition", AMBITION_RPS, AMBITION_P99_MS),
        _at_least(
            "vs Triton alone",
            f"our RPS >= {TARGET_TRITON_RATIO:.0%} of Triton alone at equal concurrency",
            _get(scenarios, "ceilings", "ratio_vs_triton"),
            TARGET_TRITON_RATIO,
            "",
        ),
        _at_least(
            "dynamic batching",
            f">= {TARGET_BATCHING_GAIN:g}x throughput of no batching at concurrency 32",
            _get(scenarios, "batching", "best_gain_vs_off"),
            TARGET_BATCHING_GAIN,
            "x",
        ),
    ]
    soak_errors = _get(scenarios, "soak", "errors")
    checks.append(
        TargetCheck(
            "soak errors",
            "no errors",
            "not measured" if soak_errors is None else str(soak_errors),
            None if soak_errors is None else soak_errors == 0,
            "" if not soak_errors else f"{soak_errors} errors",
        )
    )
    drift = _get(scenarios, "soak", "p99_drift")
    drift_check = _at_most(
        "soak p99 drift",
        f"< {TARGET_SOAK_P99_DRIFT:.0%}",
        None if drift is None else drift * 100,
        TARGET_SOAK_P99_DRIFT * 100,
        "%",
    )
    disturbed = _get(scenarios, "soak", "disturbed_windows")
    if disturbed:
        calm = _get(scenarios, "soak", "p99_drift_undisturbed")
        note = f"windows {', '.join(map(str, disturbed))} disturbed, drift without them " + (
            "-" if calm is None else f"{calm:+.1%}"
        )
        drift_check = replace(drift_check, gap="; ".join(filter(None, (drift_check.gap, note))))
    checks.append(drift_check)
    growth = _get(scenarios, "soak", "rss_growth")
    checks.append(
        _at_most(
            "soak RSS growth",
            f"< {TARGET_SOAK_RSS_GROWTH:.0%}",
            None if growth is None else growth * 100,
            TARGET_SOAK_RSS_GROWTH * 100,
            "%",
        )
    )
    checks.append(
        _at_most(
            "gateway RSS",
            f"<= {TARGET_GATEWAY_RSS_MB:.0f} MB per gateway process",
            _get(scenarios, "memory", "max_gateway_rss_mb"),
            TARGET_GATEWAY_RSS_MB + 1e-9,
            "MB",
        )
    )
    return checks


def assemble_report(
    *,
    label: str,
    machine: Mapping[str, Any],
    versions_: Mapping[str, Any],
    settings: Mapping[str, Any],
    scenarios: Mapping[str, Any],
    notes: Sequence[str] = (),
    created: datetime | None = None,
) -> dict[str, Any]:
    """The report object: everything needed to read and rerun the figures."""
    created = created or datetime.now(UTC)
    return {
        "kind": REPORT_KIND,
        "schema": SCHEMA_VERSION,
        "created": created.isoformat(timespec="seconds"),
        "label": label,
        "machine": dict(machine),
        "versions": dict(versions_),
        "settings": dict(settings),
        "scenarios": dict(scenarios),
        "targets": [asdict(check) for check in evaluate_targets(scenarios)],
        "notes": list(notes),
    }


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_report(
    report: Mapping[str, Any], results_dir: Path = RESULTS_DIR, *, stem: str | None = None
) -> tuple[Path, Path]:
    """Write `<stem>.json` and its `<stem>.md` summary; returns both paths.

    `stem` defaults to `load-<created, compact UTC>-<label>`.
    """
    if stem is None:
        created = datetime.fromisoformat(str(report["created"])).astimezone(UTC)
        stem = f"load-{created.strftime('%Y%m%dT%H%M%SZ')}-{report['label']}"
    json_path = results_dir / f"{stem}.json"
    md_path = results_dir / f"{stem}.md"
    _write_atomic(json_path, json.dumps(report, indent=2) + "\n")
    _write_atomic(md_path, markdown_summary(report))
    return json_path, md_path


def load_reports(results_dir: Path = RESULTS_DIR) -> list[dict[str, Any]]:
    """Every load report in `results_dir`, oldest first (by `created`)."""
    reports = []
    for path in sorted(results_dir.glob("load-*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("kind") == REPORT_KIND:
            data["_path"] = str(path)
            reports.append(data)
    return sorted(reports, key=lambda r: str(r.get("created", "")))


# ------------------------------------------------------------------------------- Markdown


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _latency_row(entry: Mapping[str, Any]) -> list[str]:
    lat = entry.get("latency_ms", {})
    return [
        _fmt(entry.get("ok_rps", entry.get("rps"))),
        _fmt(lat.get("p50_ms"), 2),
        _fmt(lat.get("p95_ms"), 2),
        _fmt(lat.get("p99_ms"), 2),
        _fmt(lat.get("max_ms"), 2),
        _fmt(entry.get("errors")),
        _fmt(_pct(entry.get("fallback_share")), 1),
        _fmt(_pct(_get(entry, "machine", "steal_share")), 1),
        _fmt(_get(entry, "machine", "outside_cores"), 2),
    ]


def _profile_section(profile: dict[str, Any]) -> list[str]:
    out = ["", "## Where the gateway's time goes (py-spy)", ""]
    if "inclusive" not in profile:
        return [*out, f"- not profiled: {profile.get('skipped') or profile.get('failed')}"]
    out.append(
        f"{profile['samples']:,} samples of one gateway process over {profile['seconds']} s at "
        f"concurrency {profile['concurrency']}; collapsed stacks in `{profile['output']}` "
        "(open in speedscope.app or flamegraph.pl)."
    )
    for kind, title in (("inclusive", "with callees"), ("self", "own code")):
        out += ["", f"| share ({title}) | function |", "|---|---|"]
        out += [f"| {row['share']:.1%} | `{row['function']}` |" for row in profile[kind]]
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def markdown_summary(report: Mapping[str, Any]) -> str:
    """A human-readable summary of a report."""
    machine = report.get("machine", {})
    vers = report.get("versions", {})
    scen = report.get("scenarios", {})
    out = [
        f"# Load report `{report.get('label')}` ({report.get('created')})",
        "",
        f"Machine: {machine.get('cpu_count')} CPUs ({machine.get('cpu_model')}), "
        f"{machine.get('memory_mb')} MB, load average at start "
        f"{machine.get('load_average_at_start')}; ghz ran on the same machine.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if v),
        "",
    ]
    for note in report.get("notes", []):
        out.append(f"> {note}")
    out.append("")
    out.append("## Targets")
    out.append("")
    rows = [
        [
            t["name"],
            t["target"],
            t["measured"],
            {True: "met", False: "MISSED", None: "not measured"}[t["met"]],
            t["gap"],
        ]
        for t in report.get("targets", [])
    ]
    out += _table(["target", "goal", "measured", "status", "gap"], rows)
    # fallback %: answers ranked by popularity because Triton failed, timed out or was shed.
    header = [
        "OK req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "errors",
        "fallback %",
        "steal %",
        "other CPU cores",
    ]
    if "sweep" in scen:
        out += ["", f"## Concurrency sweep ({scen['sweep'].get('system')})", ""]
        rows = [[str(e["concurrency"]), *_latency_row(e)] for e in scen["sweep"]["levels"]]
        out += _table(["concurrency", *header], rows)
        out += ["", "CPU milliseconds per answered request, by process:", ""]
        out += [
            f"- concurrency {e['concurrency']}: "
            + ", ".join(f"{role} {ms:.2f}" for role, ms in e["cpu_ms_per_request"].items())
            for e in scen["sweep"]["levels"]
            if e.get("cpu_ms_per_request")
        ]
    if "rate_search" in scen:
        rs = scen["rate_search"]
        out += ["", "## Constant-rate (open loop) steps", ""]
        rows = [[str(e["target_rps"]), *_latency_row(e)] for e in rs["steps"]]
        out += _table(["target req/s", *header], rows)
        repeated = [
            f"- {e['target_rps']} req/s missed a bound the step below met, so it ran "
            f"{len(e['attempts'])} times (p99 "
            + " / ".join(_fmt(a["p99_ms"], 2) for a in e["attempts"])
            + " ms); the row shows the median run."
            for e in rs["steps"]
            if e.get("attempts")
        ]
        if repeated:
            out += ["", *repeated]
        out += [
            "",
            "Highest rate meeting each p99 bound with no errors and at most "
            f"{_fmt(_pct(rs.get('max_fallback_share')), 1)} % of answers from the fallback ranker:",
        ]
        out += [
            f"- p99 < {k.removeprefix('p99_lt_').removesuffix('ms')} ms: {_fmt(v)} req/s"
            for k, v in rs.get("sustainable_rps", {}).items()
        ]
    if "spike" in scen:
        sp = scen["spike"]
        out += ["", "## Spike", ""]
        rows = [[phase, str(e.get("target_rps")), *_latency_row(e)] for phase, e in sp["phases"]]
        out += _table(["phase", "target req/s", *header], rows)
        out += ["", f"Recovery after the spike: {_fmt(sp.get('recovery_s'))} s"]
    if "soak" in scen:
        so = scen["soak"]
        out += [
            "",
            f"## Soak ({_fmt(so.get('duration_s'), 0)} s at {_fmt(so.get('target_rps'), 0)} req/s)",
            "",
        ]
        out += _table(
            ["window", *header],
            [[str(i), *_latency_row(w)] for i, w in enumerate(so.get("windows", []))],
        )
        out += [
            "",
            f"p99 drift {_fmt(_pct(so.get('p99_drift')))} %, RSS growth "
            f"{_fmt(_pct(so.get('rss_growth')), 2)} %, errors {so.get('errors')}, "
            f"answers ranked by the fallback {_fmt(_pct(so.get('fallback_share')), 1)} %",
        ]
        if so.get("disturbed_windows"):
            out += [
                "",
                f"Disturbed windows (steal > {DISTURBED_STEAL_SHARE:.0%} or other processes "
                f"> {DISTURBED_OUTSIDE_CORES} cores): "
                f"{', '.join(map(str, so['disturbed_windows']))}; p99 drift without them "
                f"{_fmt(_pct(so.get('p99_drift_undisturbed')))} %",
            ]
        out += [f"- RSS {k}: {v}" for k, v in (so.get("rss_mb") or {}).items()]
    if "ceilings" in scen:
        ce = scen["ceilings"]
        out += ["", f"## Ceilings at concurrency {ce.get('concurrency')}", ""]
        rows = [[name, _fmt(ce.get(f"{name}_rps"))] for name in ("gateway", "echo", "triton_alone")]
        out += _table(["system", "req/s"], rows)
        out += [
            "",
            f"Gateway / echo: {_fmt(ce.get('ratio_vs_echo'), 3)}; gateway / Triton alone: "
            f"{_fmt(ce.get('ratio_vs_triton'), 3)}",
        ]
        if ce.get("triton_skipped"):
            out.append(f"Triton alone skipped: {ce['triton_skipped']}")
        floor = ce.get("latency_floor")
        if floor:
            out += [
                "",
                f"Latency floor of this machine: the echo server (no work) at {floor['rps']} "
                f"req/s open loop answers with p50 {_fmt(floor.get('p50_ms'), 2)} ms, p99 "
                f"{_fmt(floor.get('p99_ms'), 2)} ms, max {_fmt(floor.get('max_ms'), 2)} ms: "
                "scheduling noise of the shared VM alone, per hop.",
            ]
    if "batching" in scen:
        ba = scen["batching"]
        out += ["", f"## Dynamic batching ({ba.get('model_source')})", ""]
        rows = [
            [
                v["variant"],
                _fmt(v.get("rps")),
                _fmt(v.get("p99_ms"), 2),
                _fmt(v.get("requests_per_execution"), 2),
                _fmt(v.get("gain_vs_off"), 2),
                _fmt(v.get("triton_cpu_ms_per_request"), 3),
                _fmt(v.get("cpu_gain_vs_off"), 2),
                _fmt(v.get("errors")),
            ]
            for v in ba.get("variants", [])
        ]
        header = ["variant", "req/s", "p99 ms", "requests/execution", "x off"]
        header += ["Triton CPU ms/request", "CPU x off", "errors"]
        out += _table(header, rows)
        out += [
            "",
            "ghz runs on the same CPUs; Triton's CPU per request is its own saving, apart "
            "from the client's share of the machine.",
        ]
    if "capacity" in scen:
        ca = scen["capacity"]
        out += ["", "## Capacity and cost", ""]
        out += [f"- {k}: {v}" for k, v in ca.items()]
    if "profile" in scen:
        out += _profile_section(scen["profile"])
    if scen.get("gateway_errors_logged"):
        out += ["", "## Errors the gateway logged (count, message | last traceback line)", ""]
        out += [f"- {n} x `{text}`" for text, n in scen["gateway_errors_logged"].items()]
    if "plots" in scen:
        out += ["", f"Plots: {scen['plots']}"]
    return "\n".join(out) + "\n"


def _pct(value: Any) -> float | None:
    return None if value is None else float(value) * 100


def add_triton_bench_arguments(parser: argparse.ArgumentParser, out_name: str) -> None:
    """The options every Triton micro-benchmark shares: where the models and the real feature
    rows come from, rounds, seed, and the JSON report's path (the Markdown goes beside it)."""
    parser.add_argument("--repository", type=Path, default=Path("build/triton/local"))
    parser.add_argument("--dataset", type=Path, default=Path("build/datasets/test.npz"))
    parser.add_argument("--distinct-batches", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / out_name)


def write_json_and_markdown(out: Path, report: Mapping[str, Any], markdown: str) -> None:
    """`report` as JSON at `out` and `markdown` beside it (`.md`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(f"wrote {out} and {out.with_suffix('.md')}")
