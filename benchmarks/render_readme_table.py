"""Regenerate the README's performance table from the latest load reports.

The table lives between `<!-- perf-table:start -->` and `<!-- perf-table:end -->`; only the
text between the markers is rewritten. Each row takes its figure from the newest report that
measured it; full runs are preferred, and quick smoke runs are used (and labelled) only when
no full run measured that figure.

    python -m benchmarks.render_readme_table [--readme README.md] [--results benchmarks/results]
    python -m benchmarks.render_readme_table --check   # exit 1 when the table is stale
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import report as rep

START = "<!-- perf-table:start -->"
END = "<!-- perf-table:end -->"


class MarkerError(ValueError):
    """The README lacks the markers, or has them out of order or twice."""


def replace_between_markers(text: str, table: str) -> str:
    """`text` with everything between the markers replaced by `table` (markers kept)."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise MarkerError(f"expected exactly one {START} and one {END}")
    head, rest = text.split(START, 1)
    if END not in rest:
        raise MarkerError(f"{END} comes before {START}")
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table.strip()}\n{END}{tail}"


def _get(data: Mapping[str, Any], *path: str) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


Row = tuple[str, Callable[[Mapping[str, Any]], str | None], str]
"""(figure, how to read it from a report's scenarios -- None when absent, target)."""


def _figure(*path: str, template: str) -> Callable[[Mapping[str, Any]], str | None]:
    """A reader of the value at `path`, formatted with `template` ("{:,} req/s")."""

    def read(scenarios: Mapping[str, Any]) -> str | None:
        value = _get(scenarios, *path)
        return None if value is None else template.format(value)

    return read


def _sustained(bound: int) -> Callable[[Mapping[str, Any]], str | None]:
    """The highest rate meeting p99 < bound; when the search ran and none did, says so."""

    def read(scenarios: Mapping[str, Any]) -> str | None:
        search = scenarios.get("rate_search")
        if not search:
            return None
        value = _get(search, "sustainable_rps", f"p99_lt_{bound}ms")
        if value is not None:
            return f"{value:,} req/s"
        tried = [int(step["target_rps"]) for step in search.get("steps", [])]
        return f"none of the rates tried ({min(tried):,}-{max(tried):,} req/s)" if tried else None

    return read


def _sweep_at(scen: Mapping[str, Any], concurrency: int) -> Mapping[str, Any] | None:
    for level in _get(scen, "sweep", "levels") or []:
        if level.get("concurrency") == concurrency:
            return dict(level)
    return None


def _sweep_p99(scen: Mapping[str, Any]) -> str | None:
    level = _sweep_at(scen, 32)
    if level is None:
        return None
    return f"{level['ok_rps']:,.0f} req/s, p99 {level['latency_ms']['p99_ms']:.1f} ms"


def _soak(scen: Mapping[str, Any]) -> str | None:
    soak = scen.get("soak")
    if not soak:
        return None
    drift = soak.get("p99_drift")
    growth = soak.get("rss_growth")
    fallback = soak.get("fallback_share")
    return (
        f"{soak['duration_s']:.0f} s at {soak['target_rps']}/s: {soak['errors']} errors, "
        f"p99 drift {'-' if drift is None else f'{drift:+.0%}'}, "
        f"RSS {'-' if growth is None else f'{growth:+.1%}'}"
        + ("" if fallback is None else f", {fallback:.1%} ranked by the fallback")
        + _disturbed(soak)
    )


def _disturbed(soak: Mapping[str, Any]) -> str:
    windows = soak.get("disturbed_windows")
    if not windows:
        return ""
    calm = soak.get("p99_drift_undisturbed")
    return (
        f"; {len(windows)} of {len(soak['windows'])} windows disturbed by other load "
        f"(drift without them {'-' if calm is None else f'{calm:+.0%}'})"
    )


def _cost(scen: Mapping[str, Any]) -> str | None:
    plan = scen.get("capacity") or {}
    if plan.get("usd_per_million") is None:
        return None
    out = f"${plan['usd_per_million']:.3f} at {plan['measured_rps']:,.0f} req/s"
    if plan.get("p99_bound_ms"):
        out += f" (p99 < {plan['p99_bound_ms']} ms)"
    strict = plan.get("at_p99_lt_50ms")
    if strict:
        out += f"; ${strict['usd_per_million']:.3f} at {strict['measured_rps']:,.0f} req/s"
        out += " (p99 < 50 ms)"
    return out


ROWS: tuple[Row, ...] = (
    (
        "Sustained Recommend rate, p99 < 50 ms, no errors",
        _sustained(50),
        ">= 1,000 req/s",
    ),
    (
        "Sustained rate, p99 < 25 ms",
        _sustained(25),
        ">= 2,000 req/s (ambition)",
    ),
    ("Closed loop, 32 concurrent calls", _sweep_p99, "-"),
    (
        "Gateway / echo server, 32 concurrent",
        _figure("ceilings", "ratio_vs_echo", template="{:.0%}"),
        "-",
    ),
    (
        "Gateway / Triton alone, 32 concurrent",
        _figure("ceilings", "ratio_vs_triton", template="{:.0%}"),
        ">= 40%",
    ),
    (
        "Dynamic batching vs none (Triton, 32 concurrent)",
        _figure("batching", "best_gain_vs_off", template="{:.2f}x"),
        ">= 2x",
    ),
    ("Soak", _soak, "no errors, p99 drift < 20%, RSS growth < 5%"),
    (
        "Largest gateway RSS",
        _figure("memory", "max_gateway_rss_mb", template="{:.0f} MB"),
        "<= 400 MB",
    ),
    ("Cost per million requests (70% utilisation)", _cost, "<= $0.26"),
)


def _describe(report: Mapping[str, Any]) -> str:
    machine = report.get("machine", {})
    label = str(report.get("label", ""))
    created = str(report.get("created", ""))[:10]
    run = f"{label}, {created}, {machine.get('cpu_count')} CPUs"
    return f"{run} (quick smoke run)" if label == "quick" else run


def render_table(reports: Sequence[Mapping[str, Any]]) -> str:
    """The Markdown table, each row from the newest report that has the figure."""
    ordered = sorted(reports, key=lambda r: str(r.get("created", "")), reverse=True)
    preferred = [r for r in ordered if r.get("label") != "quick"] + [
        r for r in ordered if r.get("label") == "quick"
    ]
    lines = [
        "| Figure | Measured | Target | Run |",
        "|---|---|---|---|",
    ]
    for figure, read, target in ROWS:
        value, source = "not measured yet", "-"
        for report in preferred:
            found = read(report.get("scenarios", {}))
            if found:
                value, source = found, _describe(report)
                break
        lines.append(f"| {figure} | {value} | {target} | {source} |")
    lines.append("")
    lines.append(
        "Measured with `make bench` (benchmarks/run_all.py): ghz on the same machine as the "
        "service; reports with machine, versions and settings in `benchmarks/results/`."
    )
    return "\n".join(lines)


def update_readme(readme: Path, results_dir: Path = rep.RESULTS_DIR) -> bool:
    """Rewrite the table in `readme` from the reports in `results_dir`; True when it changed."""
    text = readme.read_text(encoding="utf-8")
    updated = replace_between_markers(text, render_table(rep.load_reports(results_dir)))
    if updated == text:
        return False
    readme.write_text(updated, encoding="utf-8")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--results", type=Path, default=rep.RESULTS_DIR)
    parser.add_argument("--check", action="store_true", help="exit 1 if the table is stale")
    args = parser.parse_args(argv)
    if args.check:
        text = args.readme.read_text(encoding="utf-8")
        table = render_table(rep.load_reports(args.results))
        stale = replace_between_markers(text, table) != text
        print(f"{args.readme}: performance table {'is stale' if stale else 'is current'}")
        return 1 if stale else 0
    changed = update_readme(args.readme, args.results)
    print(f"{args.readme}: performance table {'updated' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
