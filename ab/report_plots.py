"""An experiment analysis as figures (matplotlib, PNG and SVG), beside the Markdown report.

- `<experiment>_lift`: the cumulative relative lift of every metric of every treatment at
  the end of each period, with its confidence band (the report's intervals), decisions
  marked;
- `<experiment>_arms`: users per arm over time with the SRM p-value (log scale) and its
  rollback threshold;
- `<experiment>_decisions`: the decision timeline, each decision with its reason.

Figures are built with the object API (`matplotlib.figure.Figure`, no pyplot state), so
this runs in any thread and needs no display. SVGs carry no date and fixed ids, so the same
analysis gives the same file.
"""

from __future__ import annotations

import math
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import matplotlib as mpl
import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ab.report import Analysis
from ab.variant_sums import METRICS

_DECISION_COLOURS = {
    "rollback": "tab:red",
    "promote": "tab:green",
    "stop": "tab:gray",
    "set_weights": "tab:purple",
    "reweight": "tab:purple",
}
_TITLES = {
    "ctr": "CTR (clicks / impressions)",
    "conversion_rate": "conversion (purchases / clicks)",
    "revenue_per_user": "revenue per user",
    "average_order_value": "average order value",
    "discovery_share": "discovery (new items / items recommended)",
    "discovery_click_share": "discovery clicks (new / all clicks)",
    "discovery_purchase_share": "discovery purchases (new / all purchases)",
}


def _x(times: list[datetime]) -> npt.NDArray[np.datetime64]:
    """Times as a NumPy datetime array in UTC (matplotlib's date axis; its typed API takes no
    datetime objects)."""
    return np.array([t.astimezone(UTC).replace(tzinfo=None) for t in times], dtype="datetime64[us]")


def _finite_or_nan(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else math.nan


def _mark_decisions(ax: Axes, analysis: Analysis) -> None:
    for d in analysis.decisions:
        colour = _DECISION_COLOURS.get(d.decision, "black")
        ax.vlines(
            _x([d.decided_at]),
            0,
            1,
            transform=ax.get_xaxis_transform(),
            color=colour,
            linestyle="--",
            linewidth=1.0,
            alpha=0.8,
        )


def lift_figure(analysis: Analysis) -> Figure:
    """Cumulative relative lift per metric with its confidence band, one panel per metric."""
    experiment = analysis.experiment
    control = analysis.arms[0]
    rows = (len(METRICS) + 1) // 2
    fig = Figure(figsize=(11, 3.75 * rows), layout="constrained")
    axes = fig.subplots(rows, 2, sharex=True).ravel()
    for spare in axes[len(METRICS) :]:
        spare.set_visible(False)
    ends = _x([p.end for p in analysis.points])
    for ax, metric in zip(axes, METRICS, strict=False):
        for variant in analysis.arms[1:]:
            tests = [
                next((t for t in p.tests if t.variant == variant and t.metric == metric), None)
                for p in analysis.points
            ]
            effect = [_finite_or_nan(t.effect * 100 if t else None) for t in tests]
            low = [_finite_or_nan(t.ci[0] * 100 if t else None) for t in tests]
            high = [_finite_or_nan(t.ci[1] * 100 if t else None) for t in tests]
            (line,) = ax.plot(ends, effect, marker="o", markersize=3, label=variant)
            ax.fill_between(ends, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.axhline(0.0, color="black", linewidth=0.8)
        _mark_decisions(ax, analysis)
        ax.set_title(_TITLES[metric], fontsize=10)
        ax.set_ylabel(f"lift vs {control} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    method = "always-valid" if experiment.decision_policy == "sequential" else "Welch"
    fig.suptitle(
        f"{experiment.name}: cumulative lift at the end of each period, "
        f"{1 - experiment.alpha:.0%} {method} interval; dashed: decisions",
        fontsize=11,
    )
    return fig


def arms_figure(analysis: Analysis) -> Figure:
    """Users per arm over time and the SRM p-value against its rollback threshold."""
    experiment = analysis.experiment
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.subplots()
    ends = _x([p.end for p in analysis.points])
    for arm, variant in zip(analysis.arms, experiment.variants, strict=True):
        users = [p.sums[arm].users if arm in p.sums else 0 for p in analysis.points]
        ax.plot(ends, users, marker="o", markersize=3, label=f"{arm} (weight {variant.weight:g})")
    ax.set_ylabel("users exposed (cumulative)")
    ax.grid(alpha=0.3)
    _mark_decisions(ax, analysis)
    srm_ax = ax.twinx()
    p_values = [p.srm.p_value if p.srm else math.nan for p in analysis.points]
    # p-values of 0 cannot go on a log axis; the float floor keeps them visible at the bottom
    srm_ax.plot(
        ends,
        [max(p, 1e-300) for p in p_values],
        color="black",
        linestyle=":",
        marker="x",
        label="SRM p-value",
    )
    srm_ax.axhline(experiment.srm_p_value, color="tab:red", linewidth=0.8, label="SRM threshold")
    srm_ax.set_yscale("log")
    srm_ax.set_ylabel("SRM p-value (log)")
    handles, labels = ax.get_legend_handles_labels()
    srm_handles, srm_labels = srm_ax.get_legend_handles_labels()
    ax.legend(handles + srm_handles, labels + srm_labels, loc="center left", fontsize=8)
    last = analysis.srm
    summary = f", final SRM p = {last.p_value:.3g}" if last is not None else ""
    fig.suptitle(f"{experiment.name}: arm sizes{summary}", fontsize=11)
    return fig


def decisions_figure(analysis: Analysis) -> Figure:
    """The decision timeline from the first period to the last decision."""
    experiment = analysis.experiment
    decisions = analysis.decisions
    fig = Figure(figsize=(10, 1.6 + 0.5 * max(len(decisions), 1)), layout="constrained")
    ax = fig.subplots()
    times = _x([p.end for p in analysis.points] + [d.decided_at for d in decisions])
    if len(times):
        ax.hlines(0, times.min(), times.max(), color="lightgray", linewidth=4)
    for i, d in enumerate(decisions):
        colour = _DECISION_COLOURS.get(d.decision, "black")
        level = len(decisions) - i
        when = _x([d.decided_at])
        ax.vlines(when, 0, level, color=colour, linewidth=1)
        ax.plot(when, [level], marker="o", color=colour)
        reason = textwrap.shorten(d.reason, 90, placeholder="...")
        ax.annotate(
            f"{d.decision}: {reason}",
            (when[0], level),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    if not decisions:
        ax.text(0.5, 0.5, "no decisions yet", transform=ax.transAxes, ha="center")
    ax.set_ylim(-0.5, len(decisions) + 0.8)
    ax.set_yticks([])
    ax.grid(axis="x", alpha=0.3)
    state = analysis.state
    status = state.status if state else "running"
    fig.suptitle(f"{experiment.name}: decisions (status now: {status})", fontsize=11)
    return fig


def write_plots(analysis: Analysis, out_dir: Path) -> list[Path]:
    """Writes every figure as PNG and SVG into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = analysis.experiment.name
    paths: list[Path] = []
    # Concise date labels; fixed SVG ids (no random salt), so the same analysis gives the
    # same file.
    with mpl.rc_context({"svg.hashsalt": name, "date.converter": "concise"}):
        figures = {
            "lift": lift_figure(analysis),
            "arms": arms_figure(analysis),
            "decisions": decisions_figure(analysis),
        }
        for kind, figure in figures.items():
            png = out_dir / f"{name}_{kind}.png"
            svg = out_dir / f"{name}_{kind}.svg"
            figure.savefig(png, dpi=110, metadata={"Software": None})
            figure.savefig(svg, metadata={"Date": None})
            paths += [png, svg]
    return paths
