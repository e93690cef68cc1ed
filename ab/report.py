"""Markdown analysis report of one experiment (`python -m ab analyze`).

Sections: per-variant metrics, effects with confidence intervals (two-sided, relative, with
the experiment's alpha; always-valid intervals under the sequential policy), the
sample-ratio-mismatch test, the decision history, and the cumulative lift of every metric per
day as a table (there is no plotting library in the image; the table is what a plot would
show).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import date

import asyncpg

from ab.config import ExperimentConfig
from ab.controller import MetricTest, compare_arms
from ab.metrics_sql import METRICS, VariantSums, fetch_cumulative_daily, fetch_variant_sums
from ab.srm import srm_test
from ab.store import DecisionRecord, ExperimentState, StateStore


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.2%}"


def _tests(experiment: ExperimentConfig, sums: Mapping[str, VariantSums]) -> list[MetricTest]:
    control = sums.get(experiment.variants[0].name)
    out: list[MetricTest] = []
    if control is None:
        return out
    for variant in experiment.variants[1:]:
        treatment = sums.get(variant.name)
        if treatment is None:
            continue
        for metric in METRICS:
            test = compare_arms(experiment, metric, control, treatment, "two-sided")
            if test is not None:
                out.append(test)
    return out


def render_report(
    experiment: ExperimentConfig,
    sums: Mapping[str, VariantSums],
    daily: Sequence[tuple[date, Mapping[str, VariantSums]]],
    state: ExperimentState | None,
    decisions: Sequence[DecisionRecord],
) -> str:
    """The report as Markdown."""
    arms = [v.name for v in experiment.variants]
    lines = [
        f"# Experiment `{experiment.name}`",
        "",
        f"- policy: {experiment.decision_policy}, alpha {experiment.alpha:g}, "
        f"primary metric: {experiment.primary_metric}",
        "- configured weights: " + ", ".join(f"{v.name} {v.weight:g}" for v in experiment.variants),
        f"- status: {state.status if state else 'running'}"
        + (f" (weights {dict(state.weights)})" if state and state.weights else ""),
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
    for t in _tests(experiment, sums):
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
    observed = [sums[a].users if a in sums else 0 for a in arms]
    lines += ["", "## Sample-ratio mismatch", ""]
    if sum(observed) > 0:
        srm = srm_test(observed, [v.weight for v in experiment.variants])
        lines.append(
            f"Users {dict(zip(arms, observed, strict=True))}, expected "
            f"{ {a: round(e, 1) for a, e in zip(arms, srm.expected, strict=True)} }: "
            f"chi2 = {srm.statistic:.3f}, p = {srm.p_value:.4g}"
            + (" — **mismatch**" if srm.p_value < experiment.srm_p_value else "")
        )
    else:
        lines.append("No exposed users yet.")
    lines += ["", "## Decision history", ""]
    if decisions:
        lines += ["| when | decision | reason |", "|---|---|---|"]
        for d in decisions:
            reason = d.reason.replace("|", "\\|")
            lines.append(f"| {d.decided_at.isoformat()} | {d.decision} | {reason} |")
    else:
        lines.append("No decisions yet.")
    lines += ["", "## Cumulative lift per day", ""]
    if not daily or len(arms) < 2:
        lines.append("No data.")
    for variant in arms[1:]:
        lines += [
            f"### {variant} vs {arms[0]}",
            "",
            "| day | users | " + " | ".join(f"{m} lift | {m} CI" for m in METRICS) + " |",
            "|---|---:|" + "---:|---|" * len(METRICS),
        ]
        for day, day_sums in daily:
            control, treatment = day_sums.get(arms[0]), day_sums.get(variant)
            users = sum(s.users for s in day_sums.values())
            cells = []
            for metric in METRICS:
                test = (
                    compare_arms(experiment, metric, control, treatment, "two-sided")
                    if control and treatment
                    else None
                )
                if test is None:
                    cells.append("- | -")
                else:
                    cells.append(f"{_pct(test.effect)} | [{_pct(test.ci[0])}, {_pct(test.ci[1])}]")
            lines.append(f"| {day.isoformat()} | {users} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


async def build_report(pool: asyncpg.Pool, store: StateStore, experiment: ExperimentConfig) -> str:
    """Reads everything the report needs from Postgres and renders it."""
    sums = await fetch_variant_sums(pool, experiment, start=experiment.start)
    async with pool.acquire() as connection:
        span = await connection.fetchrow(
            "SELECT min(ts) AS first, max(ts) AS last FROM exposures WHERE experiment = $1",
            experiment.name,
        )
    daily: list[tuple[date, dict[str, VariantSums]]] = []
    if span["first"] is not None:
        daily = await fetch_cumulative_daily(
            pool,
            experiment,
            start=experiment.start,
            first_day=span["first"].date(),
            last_day=span["last"].date(),
        )
    states = await store.load_states()
    decisions = await store.decisions(experiment.name)
    return render_report(experiment, sums, daily, states.get(experiment.name), decisions)
