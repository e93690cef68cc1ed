"""Analysis of one experiment (`python -m ab analyze`): the numbers, and the Markdown report.

`build_analysis` reads everything once from either backend (`ab.backends`): per-variant sums,
effects with confidence intervals (two-sided, relative, with the experiment's alpha;
always-valid intervals under the sequential policy), the sample-ratio-mismatch test, the
decision history, and the same figures cumulated at the end of every period (a day by
default) from the first exposure to the last. `render_report` writes it as Markdown;
`ab.report_files` writes it as CSV and JSON, `ab.report_plots` as figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ab.config import ExperimentConfig
from ab.controller import MetricTest, compare_arms
from ab.srm import SrmResult, srm_test
from ab.store import DecisionRecord, ExperimentState, StateStore
from ab.variant_sums import METRICS, ExperimentMetrics, VariantSums, period_ends

DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class PeriodPoint:
    """The experiment as it stood at the end of one period (everything since its start)."""

    end: datetime
    sums: Mapping[str, VariantSums]
    tests: tuple[MetricTest, ...]
    """Every treatment against control on every metric (two-sided)."""
    srm: SrmResult | None
    """None while no user is exposed or a configured weight is 0."""


@dataclass(frozen=True, slots=True)
class Analysis:
    """Everything the report, its tables and its plots show."""

    experiment: ExperimentConfig
    generated_at: datetime
    period: timedelta
    sums: Mapping[str, VariantSums]
    tests: tuple[MetricTest, ...]
    srm: SrmResult | None
    state: ExperimentState | None
    decisions: tuple[DecisionRecord, ...]
    points: tuple[PeriodPoint, ...]

    @property
    def arms(self) -> list[str]:
        """Variant names, control first."""
        return [v.name for v in self.experiment.variants]

    def period_label(self, end: datetime) -> str:
        """A period by its end: the day it closes for whole days, else the end time."""
        if self.period % DAY == timedelta(0) and end.time() == datetime.min.time():
            return (end - DAY).date().isoformat()
        return end.isoformat()


def _tests(experiment: ExperimentConfig, sums: Mapping[str, VariantSums]) -> tuple[MetricTest, ...]:
    control = sums.get(experiment.variants[0].name)
    out: list[MetricTest] = []
    if control is None:
        return ()
    for variant in experiment.variants[1:]:
        treatment = sums.get(variant.name)
        if treatment is None:
            continue
        for metric in METRICS:
            test = compare_arms(experiment, metric, control, treatment, "two-sided")
            if test is not None:
                out.append(test)
    return tuple(out)


def _srm(experiment: ExperimentConfig, sums: Mapping[str, VariantSums]) -> SrmResult | None:
    observed = [sums[v.name].users if v.name in sums else 0 for v in experiment.variants]
    weights = [v.weight for v in experiment.variants]
    if sum(observed) == 0 or not all(w > 0 for w in weights):
        return None
    return srm_test(observed, weights)


async def build_analysis(
    metrics: ExperimentMetrics,
    store: StateStore,
    experiment: ExperimentConfig,
    *,
    period: timedelta = DAY,
    now: datetime | None = None,
) -> Analysis:
    """Reads the experiment from its backend and computes every figure.

    Raises:
        ValueError: the exposures span more than `ab.variant_sums.MAX_PERIODS` periods.
        ab.store.ExperimentStoreError: the backend failed.
    """
    span = await metrics.exposure_span(experiment)
    start = experiment.start
    ends: list[datetime] = []
    if span is not None:
        first = span[0] if start is None else max(span[0], start)
        ends = period_ends(first, max(first, span[1]), period)
    [sums, *cumulative] = await metrics.cumulative(experiment, start=start, ends=[None, *ends])
    points = tuple(
        PeriodPoint(end, point, _tests(experiment, point), _srm(experiment, point))
        for end, point in zip(ends, cumulative, strict=True)
    )
    states = await store.load_states()
    return Analysis(
        experiment=experiment,
        generated_at=now or datetime.now(UTC),
        period=period,
        sums=sums,
        tests=_tests(experiment, sums),
        srm=_srm(experiment, sums),
        state=states.get(experiment.name),
        decisions=tuple(await store.decisions(experiment.name)),
        points=points,
    )


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.2%}"


def _period_name(period: timedelta) -> str:
    seconds = int(period.total_seconds())
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)):
        if seconds and seconds % size == 0 and period.microseconds == 0:
            count = seconds // size
            return unit if count == 1 else f"{count} {unit}s"
    return f"{period.total_seconds():g} seconds"


def render_report(analysis: Analysis, figures: Sequence[str] = ()) -> str:
    """The analysis as Markdown; `figures` (file names beside the report) are linked."""
    experiment, sums, state = analysis.experiment, analysis.sums, analysis.state
    arms = analysis.arms
    lines = [
        f"# Experiment `{experiment.name}`",
        "",
        f"- policy: {experiment.decision_policy}, alpha {experiment.alpha:g}, "
        f"primary metric: {experiment.primary_metric}",
        "- configured weights: " + ", ".join(f"{v.name} {v.weight:g}" for v in experiment.variants),
        f"- status: {state.status if state else 'running'}"
        + (f" (weights {dict(state.weights)})" if state and state.weights else ""),
        f"- generated at {analysis.generated_at.isoformat()}",
        "",
        "## Metrics per variant",
        "",
        "| variant | users | impressions | clicks | purchases | orders | revenue "
        "| CTR | conversion | revenue/user | AOV |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in arms:
        s = sums.get(arm)
        if s is None:
            lines.append(f"| {arm} | 0 | | | | | | | | | |")
            continue
        lines.append(
            f"| {arm} | {s.users} | {s.impressions:.0f} | {s.clicks:.0f} | {s.purchases:.0f} "
            f"| {s.orders:.0f} | {s.revenue:.2f} | {_num(s.value('ctr'))} "
            f"| {_num(s.value('conversion_rate'))} | {_num(s.value('revenue_per_user'))} "
            f"| {_num(s.value('average_order_value'))} |"
        )
    method = "always-valid (sequential)" if experiment.decision_policy == "sequential" else "Welch"
    lines += [
        "",
        f"## Effects (relative to {arms[0]}, two-sided {1 - experiment.alpha:.0%} {method} CI)",
        "",
        "| variant | metric | control | treatment | effect | CI | p-value | P(higher) |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for t in analysis.tests:
        lines.append(
            f"| {t.variant} | {t.metric} | {_num(t.control_value)} | {_num(t.treatment_value)} "
            f"| {_pct(t.effect)} | [{_pct(t.ci[0])}, {_pct(t.ci[1])}] | {t.p_value:.4g} "
            f"| {t.chance_to_win:.1%} |"
        )
    lines += [
        "",
        "P(higher): the chance that the variant's metric is above control's (flat prior, the "
        "same normal approximation as the test). It describes the data; it is not a decision "
        "rule: watched until it crosses a line, it finds false wins like a peeked p-value. "
        "Decisions use the CI above.",
    ]
    lines += ["", "## Sample-ratio mismatch", ""]
    srm = analysis.srm
    if srm is not None:
        lines.append(
            f"Users {dict(zip(arms, srm.observed, strict=True))}, expected "
            f"{ {a: round(e, 1) for a, e in zip(arms, srm.expected, strict=True)} }: "
            f"chi2 = {srm.statistic:.3f}, p = {srm.p_value:.4g}"
            + (" — **mismatch**" if srm.p_value < experiment.srm_p_value else "")
        )
    else:
        lines.append("No exposed users yet (or an arm with weight 0).")
    lines += ["", "## Decision history", ""]
    if analysis.decisions:
        lines += ["| when | decision | reason |", "|---|---|---|"]
        for d in analysis.decisions:
            reason = d.reason.replace("|", "\\|")
            lines.append(f"| {d.decided_at.isoformat()} | {d.decision} | {reason} |")
    else:
        lines.append("No decisions yet.")
    lines += ["", f"## Cumulative lift per {_period_name(analysis.period)}", ""]
    if figures:
        lines += [f"![{name}]({name})" for name in figures] + [""]
    if not analysis.points or len(arms) < 2:
        lines.append("No data.")
    for variant in arms[1:]:
        lines += [
            f"### {variant} vs {arms[0]}",
            "",
            "| period | users | " + " | ".join(f"{m} lift | {m} CI" for m in METRICS) + " |",
            "|---|---:|" + "---:|---|" * len(METRICS),
        ]
        for point in analysis.points:
            by_metric = {t.metric: t for t in point.tests if t.variant == variant}
            users = sum(s.users for s in point.sums.values())
            cells = []
            for metric in METRICS:
                test = by_metric.get(metric)
                if test is None:
                    cells.append("- | -")
                else:
                    cells.append(f"{_pct(test.effect)} | [{_pct(test.ci[0])}, {_pct(test.ci[1])}]")
            label = analysis.period_label(point.end)
            lines.append(f"| {label} | {users} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
